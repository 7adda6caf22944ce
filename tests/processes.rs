//! Real processes for the operations tests: a private `redis-server` that a test may flush, stop and start again
//! (the shared one is used by every other test at the same time), and worker processes of the real binary that a
//! test may stop with SIGTERM or kill with SIGKILL.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestEnv;

/// A port nobody listens on right now (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Dies with the test thread that started it, even when the test process is killed.
fn spawn_owned(command: &mut Command) -> std::io::Result<Child> {
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

fn signal(child: &Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A private Redis without persistence: stopping it loses everything, like a restart of a cache-only Redis.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let mut redis = PrivateRedis { port: free_port(), child: None };
        redis.start_again().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).expect("url").get_multiplexed_async_connection().await.expect("private redis answers")
    }

    /// Starts it (again) on the same port, empty, and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = spawn_owned(
            Command::new(redis_server())
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("redis-server starts (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = async {
                let mut conn = redis::Client::open(self.url()).ok()?.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
            };
            if answered.await.is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "the private redis-server did not answer within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn flush_all(&self) {
        let mut conn = self.client().await;
        let _: String = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("FLUSHALL");
    }

    /// How many consumers of the apalis queue `queue` are registered (its workers set).
    pub async fn registered_consumers(&self, queue: &str) -> usize {
        let mut conn = self.client().await;
        redis::cmd("ZCARD").arg(format!("{queue}:workers")).query_async(&mut conn).await.expect("ZCARD")
    }

    /// Unregisters every consumer of the apalis queue `queue`, as a consumer that lost its registration; the jobs
    /// stay. Returns how many there were.
    pub async fn unregister_consumers(&self, queue: &str) -> usize {
        let mut conn = self.client().await;
        let key = format!("{queue}:workers");
        redis::cmd("ZREMRANGEBYRANK").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.expect("ZREMRANGEBYRANK")
    }

    /// Stops it; everything it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_server() -> PathBuf {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// One process of the real worker binary, with the test's environment; it serves `/metrics`, `/healthz` and
/// `/readyz` on its own port.
pub struct WorkerProcess {
    pub http_port: u16,
    child: Option<Child>,
    http: reqwest::Client,
}

impl WorkerProcess {
    /// `binary`: `env!("CARGO_BIN_EXE_postbridge-test-worker")` of the calling test crate (only integration tests
    /// get that variable); `extra`: more `POSTBRIDGE_*` settings, named without the prefix.
    pub fn spawn(binary: &str, env: &TestEnv, extra: &[(&str, &str)]) -> WorkerProcess {
        let http_port = free_port();
        let mut command = Command::new(binary);
        command
            .envs(env.vars.iter())
            .env("POSTBRIDGE_WORKER_METRICS_ADDR", format!("127.0.0.1:{http_port}"))
            .stdin(Stdio::null());
        // Its log goes to the test's terminal only when asked for (`POSTBRIDGE_TEST_WORKER_LOG=warn`, `=debug`, ...).
        match std::env::var("POSTBRIDGE_TEST_WORKER_LOG") {
            Ok(level) => command.env("RUST_LOG", level),
            Err(_) => command.stdout(Stdio::null()).stderr(Stdio::null()),
        };
        for (name, value) in extra {
            command.env(format!("POSTBRIDGE_{name}"), value);
        }
        let child = spawn_owned(&mut command).expect("the worker binary starts");
        WorkerProcess { http_port, child: Some(child), http: reqwest::Client::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = self.http.get(format!("http://127.0.0.1:{}{path}", self.http_port)).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// `/readyz`: status and body, or `None` while the process does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        self.get("/readyz").await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|(_, body)| body).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200, or panics with its last answer.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.readyz().await;
            if matches!(answer, Some((200, _))) {
                return;
            }
            assert!(Instant::now() < deadline, "the worker was not ready within {within:?}: {answer:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a counter or gauge series of this process's `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// SIGKILL: no shutdown, no last words.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit; its exit status.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A private PostgreSQL cluster (the Debian server binaries, run as the `postgres` user when we are root) that a
/// test may stop and start again; its data survives a restart, like a real database outage.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempdir::Dir,
    bin: PathBuf,
    running: bool,
}

mod tempdir {
    /// A folder removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions.filter_map(Result::ok).map(|v| v.path().join("bin")).filter(|b| b.join("initdb").exists()).max()
            })
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)");
        let dir = std::env::temp_dir().join(format!("pbtest-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster folder");
        let dir = tempdir::Dir(dir);
        let as_postgres = Self::as_postgres_user();
        if as_postgres {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir.0).status().expect("chown");
            assert!(status.success(), "chown the cluster folder to postgres");
        }
        let output = Self::command(&bin.join("initdb"), as_postgres)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.0.join("data"))
            .output()
            .expect("initdb runs");
        assert!(output.status.success(), "initdb: {}", String::from_utf8_lossy(&output.stderr));
        let mut pg = PrivatePostgres { port: free_port(), dir, bin, running: false };
        pg.start_again().await;
        pg
    }

    /// Whether the server must run as the `postgres` user (we are root, which PostgreSQL refuses to run as).
    fn as_postgres_user() -> bool {
        unsafe { libc::geteuid() == 0 }
    }

    fn command(program: &std::path::Path, as_postgres: bool) -> Command {
        if as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        Self::command(&self.bin.join("pg_ctl"), Self::as_postgres_user())
            .arg("-D")
            .arg(self.dir.0.join("data"))
            .args(args)
            .output()
            .expect("pg_ctl runs")
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.0.display());
        let output =
            self.pg_ctl(&["-w", "-t", "30", "-l", &self.dir.0.join("server.log").to_string_lossy(), "-o", &options, "start"]);
        assert!(output.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&output.stderr));
        self.running = true;
    }

    /// Stops the server at once (clients are cut off); its data stays.
    pub fn stop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    /// Creates `name` with the real migrations applied.
    pub async fn create_migrated_database(&self, name: &str) {
        use sea_orm::ConnectionTrait;
        use sea_orm_migration::MigratorTrait;
        let admin = sea_orm::Database::connect(self.url("postgres")).await.expect("connect to the private postgres");
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
        admin.close().await.ok();
        let db = sea_orm::Database::connect(self.url(name)).await.expect("connect to the new database");
        postbridge_migration::Migrator::up(&db, None).await.expect("migrations apply");
        db.close().await.ok();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
