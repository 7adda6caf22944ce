#!/usr/bin/env node
// A real SMTP submission server for Postbridge's tests, built on the npm `smtp-server` package.
//
// It listens on two loopback ports: a submission port that offers STARTTLS (AUTH only after STARTTLS, like
// smtp.office365.com:587) and an implicit-TLS port (like smtp.gmail.com:465). It authenticates with
//   PLAIN / LOGIN  against a users file (`login:password` lines, re-read on every AUTH), and
//   XOAUTH2        against an RFC 7662 introspection endpoint (POST token=...; `active` must be true and `email` or
//                  `username` must equal the login, case-insensitively; an app-only token, one with a `client_id` but
//                  no `email`, is accepted for the logins its client is given in the app-senders file: lines
//                  `CLIENT_ID LOGIN`, LOGIN `*` = any; like Exchange's SMTP.SendAsApp),
// answering failures the way Exchange Online does:
//   535 5.7.3 Authentication unsuccessful
//   535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.
//       (valid credentials of a login listed in the auth-disabled file, one login a line, re-read on every AUTH)
//   454 4.7.0 Temporary authentication failure (the introspection endpoint could not be asked)
// Every accepted message is stored in the spool folder as NAME.eml (the message bytes as received, dot-unstuffed) and
// NAME.json ({"auth_user", "mail_from", "rcpt_to", ...}); the .json file appears last (both are renamed into place),
// and the 250 reply is sent only after both exist.
//
// Knobs by recipient local part (for tests of retries and failures):
//   tempfail+...@      RCPT TO answers 451 4.3.0 Try again later
//   tempfailonce+...@  the first RCPT TO of each full address answers 451 4.3.0 Try again later, later ones are accepted
//                      (remembered in memory while the server runs)
//   reject+...@        RCPT TO answers 550 5.1.1 No such user
//   dropafterdata+...@ DATA is read to its end, then the connection is closed without a reply (nothing is stored)
//
// Usage (every option may also be given as an environment variable, e.g. PB_SMTP_PORT):
//   node smtp-server.js --port 0 --secure-port 0 --cert server.crt --key server.key \
//        --users smtp-users --auth-disabled smtp-auth-disabled [--app-senders app-senders] --spool spool \
//        --introspection-url http://CLIENT:SECRET@127.0.0.1:PORT/introspect [--host 127.0.0.1] [--name localhost]
//        [--max-size 36700160] [--exit-on-stdin-eof] [--debug]
// Port 0 picks a free port. Once both ports listen it prints one line on stdout:
//   ready smtp=PORT smtps=PORT
'use strict';

const fs = require('fs');
const path = require('path');
const http = require('http');
const https = require('https');
const crypto = require('crypto');
const { SMTPServer } = require('smtp-server');
const { SMTPConnection } = require('smtp-server/lib/smtp-connection');

// ---- options ------------------------------------------------------------------------------------------------------

const OPTIONS = {
    host: { env: 'PB_SMTP_HOST', default: '127.0.0.1' },
    port: { env: 'PB_SMTP_PORT', default: '0' },
    'secure-port': { env: 'PB_SMTP_SECURE_PORT', default: '0' },
    cert: { env: 'PB_SMTP_CERT', required: true },
    key: { env: 'PB_SMTP_KEY', required: true },
    users: { env: 'PB_SMTP_USERS', required: true },
    'auth-disabled': { env: 'PB_SMTP_AUTH_DISABLED', required: true },
    'app-senders': { env: 'PB_SMTP_APP_SENDERS', default: '' },
    spool: { env: 'PB_SMTP_SPOOL', required: true },
    'introspection-url': { env: 'PB_SMTP_INTROSPECTION_URL', required: true },
    name: { env: 'PB_SMTP_NAME', default: 'localhost' },
    'max-size': { env: 'PB_SMTP_MAX_SIZE', default: String(35 * 1024 * 1024) },
    'exit-on-stdin-eof': { env: 'PB_SMTP_EXIT_ON_STDIN_EOF', flag: true },
    debug: { env: 'PB_SMTP_DEBUG', flag: true }
};

function usage(message) {
    process.stderr.write(`smtp-server.js: ${message}\n(see the comment at the top of smtp-server.js for the options)\n`);
    process.exit(2);
}

function parseOptions(argv) {
    const values = {};
    for (const [name, spec] of Object.entries(OPTIONS)) {
        const fromEnv = process.env[spec.env];
        if (spec.flag) {
            values[name] = fromEnv === '1' || fromEnv === 'true';
        } else if (fromEnv !== undefined && fromEnv !== '') {
            values[name] = fromEnv;
        } else if (spec.default !== undefined) {
            values[name] = spec.default;
        }
    }
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        if (!arg.startsWith('--')) usage(`unexpected argument ${arg}`);
        let name = arg.slice(2);
        let value;
        const eq = name.indexOf('=');
        if (eq >= 0) {
            value = name.slice(eq + 1);
            name = name.slice(0, eq);
        }
        const spec = OPTIONS[name];
        if (!spec) usage(`unknown option --${name}`);
        if (spec.flag) {
            values[name] = value === undefined ? true : value === '1' || value === 'true';
            continue;
        }
        if (value === undefined) {
            if (i + 1 >= argv.length) usage(`--${name} needs a value`);
            value = argv[++i];
        }
        values[name] = value;
    }
    for (const [name, spec] of Object.entries(OPTIONS)) {
        if (spec.required && (values[name] === undefined || values[name] === '')) usage(`--${name} is required`);
    }
    return values;
}

const opts = parseOptions(process.argv.slice(2));

function log(message) {
    process.stderr.write(`${new Date().toISOString()} ${message}\n`);
}

// ---- replies ------------------------------------------------------------------------------------------------------

const AUTH_FAILED = '5.7.3 Authentication unsuccessful';
const AUTH_DISABLED = '5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.';
const AUTH_TEMPFAIL = '4.7.0 Temporary authentication failure';

function smtpError(code, message) {
    const err = new Error(message);
    err.responseCode = code;
    return err;
}

// smtp-server adds an enhanced status code chosen from the reply code; replies that carry their own (the ones above)
// are sent as they are. It also lists AUTH before STARTTLS although AUTH is refused there: real submission servers
// (Exchange Online, Dovecot, Postfix) offer AUTH only after STARTTLS, so the pre-TLS EHLO reply leaves it out.
const originalSend = SMTPConnection.prototype.send;
if (typeof originalSend !== 'function') throw new Error('smtp-server: SMTPConnection.prototype.send not found');
SMTPConnection.prototype.send = function send(code, data, context) {
    if (typeof data === 'string' && /^[245]\.\d{1,3}\.\d{1,3} /.test(data)) {
        context = false;
    }
    if (Array.isArray(data) && code === 250 && !this.secure) {
        data = data.filter(line => !/^AUTH /.test(line));
    }
    return originalSend.call(this, code, data, context);
};

// ---- credentials --------------------------------------------------------------------------------------------------

function readLines(file) {
    let text;
    try {
        text = fs.readFileSync(file, 'utf8');
    } catch (err) {
        if (err.code === 'ENOENT') return [];
        throw err;
    }
    return text.split(/\r?\n/).filter(line => line !== '' && !line.startsWith('#'));
}

function passwordMatches(login, password) {
    const wanted = login.toLowerCase();
    for (const line of readLines(opts.users)) {
        const colon = line.indexOf(':');
        if (colon < 0) continue;
        if (line.slice(0, colon).toLowerCase() === wanted && line.slice(colon + 1) === password) return true;
    }
    return false;
}

function smtpAuthDisabled(login) {
    const wanted = login.toLowerCase();
    return readLines(opts['auth-disabled']).some(line => line.trim().toLowerCase() === wanted);
}

// POSTs token=... to the introspection URL (credentials in the URL become HTTP Basic, as Dovecot does). Uses the http
// module rather than fetch(): fetch refuses some ports outright ("bad port").
function introspect(token) {
    return new Promise((resolve, reject) => {
        const url = new URL(opts['introspection-url']);
        const body = new URLSearchParams({ token }).toString();
        const headers = {
            'Content-Type': 'application/x-www-form-urlencoded',
            'Content-Length': Buffer.byteLength(body),
            Accept: 'application/json'
        };
        if (url.username || url.password) {
            const user = decodeURIComponent(url.username);
            const pass = decodeURIComponent(url.password);
            headers.Authorization = 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64');
        }
        const client = url.protocol === 'https:' ? https : http;
        const req = client.request(
            {
                protocol: url.protocol,
                hostname: url.hostname.replace(/^\[|\]$/g, ''),
                port: url.port || undefined,
                path: url.pathname + url.search,
                method: 'POST',
                headers,
                timeout: 10000
            },
            res => {
                const chunks = [];
                res.on('data', chunk => chunks.push(chunk));
                res.on('end', () => {
                    const text = Buffer.concat(chunks).toString('utf8');
                    if (res.statusCode !== 200) {
                        reject(new Error(`introspection answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
                        return;
                    }
                    try {
                        resolve(JSON.parse(text));
                    } catch (err) {
                        reject(new Error(`introspection answered invalid JSON: ${text.slice(0, 200)}`));
                    }
                });
                res.on('error', reject);
            }
        );
        req.on('timeout', () => req.destroy(new Error('introspection timed out')));
        req.on('error', reject);
        req.end(body);
    });
}

function appMaySendAs(clientId, login) {
    if (!opts['app-senders']) return false;
    const wanted = login.toLowerCase();
    return readLines(opts['app-senders']).some(line => {
        const [client, who] = line.trim().split(/\s+/);
        return client === clientId && who !== undefined && (who === '*' || who.toLowerCase() === wanted);
    });
}

async function tokenBelongsTo(token, login) {
    const info = await introspect(token);
    if (!info || info.active !== true) return false;
    const wanted = login.toLowerCase();
    if (typeof info.email !== 'string' && typeof info.client_id === 'string' && appMaySendAs(info.client_id, login)) {
        return true;
    }
    return [info.email, info.username].some(v => typeof v === 'string' && v.toLowerCase() === wanted);
}

function onAuth(auth, session, callback) {
    const login = auth.username || '';
    const done = ok => {
        if (!ok) {
            log(`auth ${auth.method} ${login}: failed`);
            return callback(smtpError(535, AUTH_FAILED));
        }
        if (smtpAuthDisabled(login)) {
            log(`auth ${auth.method} ${login}: SMTP AUTH disabled`);
            return callback(smtpError(535, AUTH_DISABLED));
        }
        log(`auth ${auth.method} ${login}: ok`);
        callback(null, { user: login });
    };
    if (auth.method === 'XOAUTH2') {
        tokenBelongsTo(auth.accessToken || '', login).then(done, err => {
            log(`auth XOAUTH2 ${login}: introspection failed: ${err.message}`);
            callback(smtpError(454, AUTH_TEMPFAIL));
        });
        return;
    }
    if (auth.method === 'PLAIN' || auth.method === 'LOGIN') {
        return done(passwordMatches(login, auth.password || ''));
    }
    callback(smtpError(504, '5.5.4 Unrecognized authentication type'));
}

// ---- envelope knobs -----------------------------------------------------------------------------------------------

function localPart(address) {
    const at = (address || '').lastIndexOf('@');
    return (at >= 0 ? address.slice(0, at) : address || '').toLowerCase();
}

// Full recipient addresses (lower-cased) that a `tempfailonce+` RCPT TO was already refused for.
const tempFailedOnce = new Set();

function onRcptTo(address, session, callback) {
    const local = localPart(address.address);
    if (local.startsWith('tempfail+')) return callback(smtpError(451, '4.3.0 Try again later'));
    if (local.startsWith('tempfailonce+')) {
        const full = (address.address || '').toLowerCase();
        if (!tempFailedOnce.has(full)) {
            tempFailedOnce.add(full);
            return callback(smtpError(451, '4.3.0 Try again later'));
        }
    }
    if (local.startsWith('reject+')) return callback(smtpError(550, '5.1.1 No such user'));
    callback();
}

// ---- message store ------------------------------------------------------------------------------------------------

fs.mkdirSync(opts.spool, { recursive: true });
let counter = 0;

function spoolName() {
    counter += 1;
    const stamp = String(Date.now()).padStart(15, '0');
    return `${stamp}-${String(counter).padStart(8, '0')}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
}

function writeAtomically(file, data) {
    const tmp = path.join(path.dirname(file), `.tmp-${path.basename(file)}`);
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
}

const servers = [];

function findConnection(session) {
    for (const server of servers) {
        for (const connection of server.connections) {
            if (connection.session === session) return connection;
        }
    }
    return null;
}

function onData(stream, session, callback) {
    const chunks = [];
    stream.on('data', chunk => chunks.push(chunk));
    stream.on('error', err => callback(err));
    stream.on('end', () => {
        const rcptTo = session.envelope.rcptTo.map(r => r.address);
        if (rcptTo.some(r => localPart(r).startsWith('dropafterdata+'))) {
            log(`dropping the connection after DATA (to ${rcptTo.join(', ')})`);
            const connection = findConnection(session);
            if (connection && connection._socket) {
                connection._socket.destroy();
            } else {
                log('dropafterdata: connection not found; answering 421 instead');
                callback(smtpError(421, '4.4.2 Connection dropped'));
            }
            return;
        }
        if (stream.sizeExceeded) {
            return callback(smtpError(552, '5.3.4 Message size exceeds fixed maximum message size'));
        }
        const raw = Buffer.concat(chunks);
        const name = spoolName();
        const messageId = `<${name}@${opts.name}>`;
        const meta = {
            auth_user: session.user || null,
            mail_from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            rcpt_to: rcptTo,
            size: raw.length,
            received_at: new Date().toISOString(),
            secure: !!session.secure,
            queue_id: messageId
        };
        try {
            writeAtomically(path.join(opts.spool, `${name}.eml`), raw);
            writeAtomically(path.join(opts.spool, `${name}.json`), JSON.stringify(meta) + '\n');
        } catch (err) {
            log(`cannot store a message: ${err.message}`);
            return callback(smtpError(451, '4.3.0 Local error in processing'));
        }
        log(`accepted ${name} from ${meta.mail_from} (auth ${meta.auth_user}) to ${rcptTo.join(', ')}`);
        // `slow+` recipients: the message is stored at once but the 250 comes 200 ms later, like a busy server
        // (`slower+`: a second later); a client cut off meanwhile never hears that its message was accepted.
        const delay = rcptTo.some(r => localPart(r).startsWith('slower+')) ? 1000
            : rcptTo.some(r => localPart(r).startsWith('slow+')) ? 200 : 0;
        if (delay) return setTimeout(() => callback(null, `${messageId} Queued mail for delivery`), delay);
        callback(null, `${messageId} Queued mail for delivery`);
    });
}

// ---- servers ------------------------------------------------------------------------------------------------------

const tlsKey = fs.readFileSync(opts.key);
const tlsCert = fs.readFileSync(opts.cert);

function makeServer(secure) {
    const server = new SMTPServer({
        secure,
        key: tlsKey,
        cert: tlsCert,
        minVersion: 'TLSv1.2',
        name: opts.name,
        banner: 'Postbridge test SMTP server ready',
        authMethods: ['PLAIN', 'LOGIN', 'XOAUTH2'],
        authOptional: false,
        allowInsecureAuth: false,
        authRequiredMessage: '5.7.57 Client not authenticated to send mail',
        hideENHANCEDSTATUSCODES: false,
        hideREQUIRETLS: true,
        size: Number(opts['max-size']),
        logger: opts.debug,
        onAuth,
        onRcptTo,
        onData
    });
    server.on('error', err => log(`${secure ? 'smtps' : 'smtp'} server error: ${err.message}`));
    servers.push(server);
    return server;
}

function listen(server, port) {
    return new Promise((resolve, reject) => {
        const onError = err => reject(err);
        server.server.once('error', onError);
        server.listen(Number(port), opts.host, () => {
            server.server.removeListener('error', onError);
            resolve(server.server.address().port);
        });
    });
}

async function main() {
    const plainPort = await listen(makeServer(false), opts.port);
    const securePort = await listen(makeServer(true), opts['secure-port']);
    process.stdout.write(`ready smtp=${plainPort} smtps=${securePort}\n`);
    log(`listening on ${opts.host}:${plainPort} (STARTTLS) and ${opts.host}:${securePort} (TLS)`);
}

function shutdown(reason) {
    log(`stopping (${reason})`);
    process.exit(0);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (opts['exit-on-stdin-eof']) {
    process.stdin.on('end', () => shutdown('standard input closed'));
    process.stdin.on('error', () => shutdown('standard input failed'));
    process.stdin.resume();
}

main().catch(err => {
    log(`cannot start: ${err.message}`);
    process.exit(1);
});
