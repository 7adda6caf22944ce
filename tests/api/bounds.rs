//! Bounded requests: GraphQL operations (aliases, size, complexity, cost against the rate limit, no echo), the
//! GraphQL body and its content type, per-address limits without a valid credential, and the HTTP bounds every
//! route shares (405 with Allow, 413, 414, 415, 431 as `{code, message}` JSON).

use postbridge_tests::{assert_error, graphql_error_code, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// POSTs `body` to `/graphql` with a content type; returns status, Retry-After and the body as text.
async fn post_graphql(
    app: &TestApp,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Option<String>, String) {
    let mut req = app.http.post(format!("{}/graphql", app.address)).header("content-type", content_type).body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().expect("ascii").to_owned());
    (status, retry_after, resp.text().await.unwrap_or_default())
}

fn parsed(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {}", &text[..text.len().min(500)]))
}

fn aliases(n: usize, field: &str) -> String {
    format!("{{ {} }}", (0..n).map(|i| format!("a{i}: {field} ")).collect::<String>())
}

#[tokio::test]
async fn thousands_of_aliases_of_a_full_page_are_refused_before_anything_runs() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let query = aliases(10_000, "accounts(limit: 200) { items { id login state } nextCursor }");
    assert!(query.len() < 1024 * 1024, "under the body limit: {}", query.len());
    let body = app.graphql(Some(&key), &query, json!({})).await;
    assert_eq!(graphql_error_code(&body), "too_many_aliases", "{}", &body.to_string()[..500.min(body.to_string().len())]);
    assert!(body["data"].is_null(), "nothing ran: {body}");
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(1));

    // The same holds for fragments: each use counts.
    let fragments =
        format!("{{ {} }} fragment P on Query {{ x: accounts(limit: 200) {{ items {{ id }} }} }}", "...P ".repeat(60));
    assert_eq!(graphql_error_code(&app.graphql(Some(&key), &fragments, json!({})).await), "too_many_aliases");

    // A few aliases are fine, and the refused operations charged nothing against the tenant's limit.
    let reply =
        app.patch(&format!("/v1/tenants/{tenant}"), &app.operator_token(), json!({"api_rate_limit_per_minute": 20})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let small = app.graphql(Some(&key), &aliases(3, "accounts(limit: 200) { nextCursor }"), json!({})).await;
    assert!(small["errors"].is_null(), "{small}");
    assert!(small["data"]["a2"]["nextCursor"].is_null(), "{small}");
}

#[tokio::test]
async fn a_page_costs_its_limit_in_complexity_so_many_full_pages_are_refused_and_small_ones_run() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    // 30 pages of 200 items with 3 fields each: about 30 × 200 × 5 = 30,000 > 20,000.
    let full = app.graphql(Some(&key), &aliases(30, "accounts(limit: 200) { items { id login state } }"), json!({})).await;
    let message = full["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("complex"), "{full}");
    assert!(full["data"].is_null(), "{full}");
    let small = app.graphql(Some(&key), &aliases(30, "accounts(limit: 5) { items { id login state } }"), json!({})).await;
    assert!(small["errors"].is_null(), "{small}");
    assert_eq!(small["data"]["a29"]["items"], json!([]));
}

#[tokio::test]
async fn a_graphql_operation_costs_one_request_per_top_level_field_and_is_answered_429_when_over() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let reply =
        app.patch(&format!("/v1/tenants/{tenant}"), &app.operator_token(), json!({"api_rate_limit_per_minute": 10})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // 8 top-level fields: 8 of the 10.
    let (status, _, text) =
        post_graphql(&app, Some(&key), "application/json", json!({"query": aliases(8, "me { role }")}).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(parsed(&text)["data"]["a7"]["role"], json!("ADMIN"), "{text}");
    // 5 more do not fit in the 2 left.
    let (status, retry_after, text) =
        post_graphql(&app, Some(&key), "application/json", json!({"query": aliases(5, "me { role }")}).to_string()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s))), "{text}");
    let body = parsed(&text);
    assert_eq!(graphql_error_code(&body), "rate_limited", "{text}");
    assert!(body["data"].is_null(), "{text}");
}

#[tokio::test]
async fn a_syntax_error_names_its_position_and_never_echoes_the_query() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let query = format!("{{ me {{ role }} }} {} !!", "x".repeat(500_000));
    let (status, _, text) = post_graphql(&app, Some(&key), "application/json", json!({"query": query}).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{}", &text[..text.len().min(500)]);
    assert!(text.len() < 2_000, "the answer is short: {} bytes", text.len());
    assert!(!text.contains("xxxxxxxxxx"), "{text}");
    let body = parsed(&text);
    assert_eq!(graphql_error_code(&body), "invalid_query", "{text}");
    assert!(body["errors"][0]["message"].as_str().unwrap_or_default().contains("line 1"), "{text}");
    // Unknown names are quoted by validation, but cut short.
    let long_name = "y".repeat(5_000);
    let (_, _, text) =
        post_graphql(&app, Some(&key), "application/json", json!({"query": format!("{{ {long_name} }}")}).to_string()).await;
    assert!(text.len() < 2_000, "{} bytes", text.len());
}

#[tokio::test]
async fn a_graphql_body_over_the_limit_is_refused_413_before_it_is_read_and_without_echo() {
    let app = spawn_app().await;
    // Announced with Content-Length.
    let big = json!({"query": format!("{{ me {{ role }} }} #{}", "z".repeat(2 * 1024 * 1024))}).to_string();
    let (status, _, text) = post_graphql(&app, None, "application/json", big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(parsed(&text)["code"], json!("payload_too_large"), "{text}");
    assert!(text.len() < 500);
    // Streamed without a length (chunked): cut off once past the limit.
    let response = chunked_post(&app, "/graphql", big.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{}", &response[..response.len().min(300)]);
    assert!(response.contains("payload_too_large"), "{response}");
}

/// POSTs `body` in 64 KiB chunks without a Content-Length; returns the raw response (the server may answer
/// and close before the body is all sent).
async fn chunked_post(app: &TestApp, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head sent");
    for chunk in body.chunks(64 * 1024) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn only_json_bodies_run_a_graphql_operation_and_introspection_needs_no_credential() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let operation = json!({"query": "{ me { role } }"}).to_string();
    for content_type in
        ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/graphql"]
    {
        let (status, _, text) = post_graphql(&app, Some(&key), content_type, operation.clone()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}: {text}");
        assert_eq!(parsed(&text)["code"], json!("unsupported_media_type"), "{text}");
    }
    for content_type in ["application/json", "application/json; charset=utf-8", "application/graphql-response+json"] {
        let (status, _, text) = post_graphql(&app, Some(&key), content_type, operation.clone()).await;
        assert_eq!(status, StatusCode::OK, "{content_type}: {text}");
        assert_eq!(parsed(&text)["data"]["me"]["role"], json!("ADMIN"), "{text}");
    }
    let (status, _, text) = post_graphql(&app, Some(&key), "application/json", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(parsed(&text)["code"], json!("invalid_body"));

    // The full introspection query GraphiQL sends fits every bound, without a credential.
    let body = app.graphql(None, INTROSPECTION, json!({})).await;
    assert!(body["errors"].is_null(), "{}", &body.to_string()[..body.to_string().len().min(1000)]);
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], json!("Query"));
    // Data still needs one.
    assert_eq!(graphql_error_code(&app.graphql(None, "{ accounts { nextCursor } }", json!({})).await), "unauthenticated");
}

#[tokio::test]
async fn requests_without_a_valid_credential_are_limited_per_client_address() {
    let mut env = TestEnv::new();
    env.set("ANON_RATE_LIMIT_PER_MINUTE", "4");
    let app = spawn_app_with(env).await;
    let (_, key) = app.tenant_with_admin().await;
    assert_error(&app.request(Method::GET, "/v1/accounts", None, None, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_error(&app.get("/v1/accounts", "pbk_not-a-key").await, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(graphql_error_code(&app.graphql(Some("wrong"), "{ me { role } }", json!({})).await), "unauthenticated");
    assert_error(&app.request(Method::GET, "/v1/accounts", None, None, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    // The fifth within the minute, REST or GraphQL, with no credential or a wrong one.
    let resp = app.http.get(format!("{}/v1/accounts", app.address)).bearer_auth("wrong").send().await.expect("sent");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(resp.json::<Value>().await.expect("json")["code"], json!("rate_limited"));
    let graphql = app.graphql(None, "{ __typename }", json!({})).await;
    assert_eq!(graphql["code"], json!("rate_limited"), "{graphql}");
    // A valid credential from the same address is counted against its tenant, not the address.
    let reply = app.get("/v1/accounts", &key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // Routes outside /v1 and /graphql are not limited.
    assert_eq!(app.request(Method::GET, "/healthz", None, None, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_method_answers_405_with_allow_and_an_unknown_path_404() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for (method, path, allow) in [
        (Method::PUT, "/v1/accounts", "GET, POST"),
        (Method::DELETE, "/v1/messages", "GET, POST"),
        (Method::POST, "/v1/accounts/00000000-0000-0000-0000-000000000001", "GET, PATCH, DELETE"),
        (Method::DELETE, "/graphql", "GET, POST"),
    ] {
        let resp =
            app.http.request(method.clone(), format!("{}{path}", app.address)).bearer_auth(&key).send().await.expect("sent");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let got = resp.headers().get("allow").map(|v| v.to_str().expect("ascii").to_owned()).unwrap_or_default();
        let mut got: Vec<&str> = got.split(", ").collect();
        let mut want: Vec<&str> = allow.split(", ").collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{method} {path}");
        assert_eq!(resp.json::<Value>().await.expect("json")["code"], json!("method_not_allowed"));
    }
    assert_error(&app.get("/v1/nothing-here", &key).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_query_parameter_the_route_does_not_take_is_refused_400_naming_those_it_does() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    // A misspelt filter is refused, not ignored: the answer would otherwise be every event, unfiltered.
    let reply = app.get("/v1/events?event_type=message.sent", &key).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "unknown_query_parameter");
    let message = reply.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("`event_type`") && message.contains("types"), "names the wrong one and the right ones: {message}");
    assert_eq!(app.get("/v1/events?types=message.sent&limit=5", &key).await.status, StatusCode::OK);
    // A route that takes none, and a list's filters that belong to another list.
    let reply = app.get("/v1/accounts/00000000-0000-0000-0000-000000000001?expand=grant", &key).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "unknown_query_parameter");
    assert!(reply.body["message"].as_str().unwrap_or_default().contains("it takes: none"), "{}", reply.text);
    assert_error(&app.get("/v1/messages?folder=INBOX", &key).await, StatusCode::BAD_REQUEST, "unknown_query_parameter");
    assert_eq!(app.get("/v1/messages?status=sent&limit=10", &key).await.status, StatusCode::OK);
    // Checked before the credential, like the other bounds of a request.
    let reply = app.http.get(format!("{}/v1/accounts?colour=red", app.address)).send().await.expect("sent");
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    // The OAuth callback takes whatever the provider adds: it is refused for its state, not for `session_state`.
    let reply =
        app.http.get(format!("{}/oauth/callback?state=forged&code=x&session_state=abc", app.address)).send().await.expect("sent");
    let page = reply.text().await.unwrap_or_default();
    assert!(!page.contains("unknown_query_parameter"), "the provider's own parameters are accepted: {page}");
}

#[tokio::test]
async fn oversized_urls_headers_and_bodies_answer_json_414_431_and_413() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let long_url = format!("/v1/accounts?cursor={}", "a".repeat(9_000));
    assert_error(&app.get(&long_url, &key).await, StatusCode::URI_TOO_LONG, "uri_too_long");

    let mut req = app.http.get(format!("{}/v1/accounts", app.address)).bearer_auth(&key);
    for i in 0..70 {
        req = req.header(format!("x-filler-{i}"), "v");
    }
    let resp = req.send().await.expect("sent");
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(resp.json::<Value>().await.expect("json")["code"], json!("headers_too_large"));

    let resp = app
        .http
        .get(format!("{}/v1/accounts", app.address))
        .bearer_auth(&key)
        .header("x-filler", "b".repeat(40_000))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Every JSON route: 1 MiB by default, refused on its Content-Length.
    let (status, body) = app.post_announcing("/v1/api-keys", &key, 2 * 1024 * 1024).await;
    assert_eq!((status, &body["code"]), (413, &json!("payload_too_large")), "{body}");
    let resp = app
        .http
        .post(format!("{}/v1/api-keys", app.address))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body(json!({"name": "k", "role": "admin"}).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(resp.json::<Value>().await.expect("json")["code"], json!("unsupported_media_type"));
}

/// The introspection query of GraphiQL (graphql-js `getIntrospectionQuery`).
const INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name }
    mutationType { name }
    subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
}
"#;

#[tokio::test]
async fn the_openapi_document_lists_the_errors_and_bounds_the_server_applies() {
    let app = spawn_app().await;
    let doc = app.request(Method::GET, "/openapi.json", None, None, None).await.body;
    let statuses = |path: &str, method: &str| -> Vec<String> {
        let responses = doc["paths"][path][method]["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}"));
        responses.keys().cloned().collect()
    };
    let list = statuses("/v1/accounts", "get");
    for status in ["200", "400", "401", "403", "422", "429"] {
        assert!(list.iter().any(|s| s == status), "GET /v1/accounts lacks {status}: {list:?}");
    }
    let send = statuses("/v1/messages", "post");
    for status in ["202", "400", "401", "403", "413", "415", "422", "429"] {
        assert!(send.iter().any(|s| s == status), "POST /v1/messages lacks {status}: {send:?}");
    }
    assert!(statuses("/v1/accounts/{id}", "get").iter().any(|s| s == "404"));
    let params = doc["paths"]["/v1/accounts"]["get"]["parameters"].as_array().expect("parameters");
    let limit = params.iter().find(|p| p["name"] == "limit").expect("limit parameter");
    assert_eq!((&limit["schema"]["minimum"], &limit["schema"]["maximum"]), (&json!(1), &json!(200)), "{limit}");
    // Every 4xx the document names has the error body.
    let not_found = &doc["paths"]["/v1/accounts/{id}"]["get"]["responses"]["404"]["content"]["application/json"]["schema"];
    assert_eq!(not_found["$ref"], json!("#/components/schemas/ErrorBody"), "{not_found}");
}
