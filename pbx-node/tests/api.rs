//! The management REST API against a real node: login, sessions, API
//! keys, lockout and rate limits; tenants, extensions, users and custom
//! roles with their refusals (auth, permission, validation, limits); and
//! tenant isolation, proven by walking every path of the served OpenAPI
//! document as tenant A's administrator against tenant B's resources.

mod common;

use std::net::SocketAddr;

use common::{loopback_config, ADMIN_PASSWORD};
use pbx_node::PbxNode;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

/// A client logged in as one principal.
struct Api {
    client: Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn anonymous(addr: SocketAddr) -> Api {
        Api {
            client: Client::new(),
            base: format!("http://{addr}"),
            token: None,
        }
    }

    async fn login(addr: SocketAddr, username: &str, password: &str) -> Api {
        let mut api = Api::anonymous(addr);
        let (status, body) = api
            .call(
                Method::POST,
                "/api/v1/auth/login",
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        api.token = Some(body["token"].as_str().expect("token").to_string());
        api
    }

    fn with_token(addr: SocketAddr, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..Api::anonymous(addr)
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"))
        };
        (status, value)
    }

    /// A request with a body of any type.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, String)>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, text)) = body {
            request = request.header("content-type", content_type).body(text);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }
}

/// Asserts an error response: status, `error.code` and `error.field`.
fn assert_error(result: &(StatusCode, Value), status: StatusCode, code: &str, field: Option<&str>) {
    let (got, body) = result;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["field"].as_str(), field, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

async fn start_node(dir: &std::path::Path, logins_per_minute: u32) -> PbxNode {
    let mut config = loopback_config(1, dir);
    config.api_logins_per_minute = logins_per_minute;
    PbxNode::start(&config).await.expect("start node")
}

/// Tenants ACME and GLOBEX, each with an administrator, one extension and
/// a custom role; returns (system admin, ACME admin, GLOBEX admin).
async fn two_tenants(addr: SocketAddr) -> (Api, Api, Api) {
    let system = Api::login(addr, "admin", ADMIN_PASSWORD).await;
    for (name, code) in [("Acme", "ACME"), ("Globex", "GLOBEX")] {
        let (status, body) = system
            .post(
                "/api/v1/tenants",
                json!({"name": name, "code": code, "sip_domain": format!("{}.example", code.to_lowercase()),
                       "timezone": "Europe/Rome"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let admin = format!("admin@{}", code.to_lowercase());
        let (status, body) = system
            .post(
                "/api/v1/users",
                json!({"username": admin, "password": "tenant pass 1", "role": "tenant_admin",
                       "tenant_code": code}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let acme = Api::login(addr, "admin@acme", "tenant pass 1").await;
    let globex = Api::login(addr, "admin@globex", "tenant pass 1").await;
    let (status, body) = globex
        .post(
            "/api/v1/tenants/GLOBEX/extensions",
            json!({"number": "100", "password": "globex-secret-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = globex
        .put(
            "/api/v1/tenants/GLOBEX/roles/auditor",
            json!({"grants": [{"area": "Analytics", "level": "View Only"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (system, acme, globex)
}

#[tokio::test]
async fn login_sessions_api_keys_and_lockout() {
    common::init_test_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), 100).await;
    let addr = node.http.addr;
    let anonymous = Api::anonymous(addr);

    // No token, a made-up token, a made-up API key: 401 with a challenge.
    assert_error(
        &anonymous.get("/api/v1/auth/me").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let forged = Api::with_token(addr, "not-a-session");
    assert_error(
        &forged.get("/api/v1/auth/me").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let forged_key = Api::with_token(addr, "pbxk_0011223344556677_nope");
    assert_error(
        &forged_key.get("/api/v1/auth/me").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );

    // A wrong password and an unknown user get the same answer.
    let wrong = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"username": "admin", "password": "nope nope 1"}),
        )
        .await;
    let unknown = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"username": "nobody", "password": "nope nope 1"}),
        )
        .await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert_eq!(wrong, unknown);

    let system = Api::login(addr, "admin", ADMIN_PASSWORD).await;
    let (status, me) = system.get("/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["role"], "system_admin");
    assert!(me["grants"]
        .as_array()
        .expect("grants")
        .contains(&json!("System Tenant: Full Access")));

    // An API key acts as its owner until deleted.
    let (status, created) = system
        .post("/api/v1/api-keys", json!({"name": "crm-sync"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().expect("key");
    let integration = Api::with_token(addr, key);
    assert_eq!(
        integration.get("/api/v1/auth/me").await.1["username"],
        "admin"
    );
    let (_, keys) = system.get("/api/v1/api-keys").await;
    assert_eq!(keys["items"][0]["name"], "crm-sync");
    assert!(
        keys["items"][0].get("key").is_none(),
        "the key is shown once"
    );
    let id = created["id"].as_str().expect("id");
    assert_eq!(
        system.delete(&format!("/api/v1/api-keys/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        integration.get("/api/v1/auth/me").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Logout ends the session on the server.
    let session = Api::login(addr, "admin", ADMIN_PASSWORD).await;
    assert_eq!(
        session.post("/api/v1/auth/logout", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        session.get("/api/v1/auth/me").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Five failures lock the account: then even the right password is refused.
    let (status, body) = system
        .post(
            "/api/v1/users",
            json!({"username": "victim", "password": "victim pass 1", "role": "system_admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for _ in 0..5 {
        let r = anonymous
            .post(
                "/api/v1/auth/login",
                json!({"username": "victim", "password": "guess guess 1"}),
            )
            .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized", None);
    }
    let locked = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"username": "victim", "password": "victim pass 1"}),
        )
        .await;
    assert_error(&locked, StatusCode::UNAUTHORIZED, "account_locked", None);
    // So is a name that does not exist: the lock tells nothing about accounts.
    for _ in 0..5 {
        anonymous
            .post(
                "/api/v1/auth/login",
                json!({"username": "ghost", "password": "guess guess 1"}),
            )
            .await;
    }
    let ghost = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"username": "ghost", "password": "guess guess 1"}),
        )
        .await;
    assert_error(&ghost, StatusCode::UNAUTHORIZED, "account_locked", None);
    // Other accounts are unaffected.
    Api::login(addr, "admin", ADMIN_PASSWORD).await;

    // Passwords follow the policy.
    let weak = system
        .post(
            "/api/v1/users",
            json!({"username": "weak", "password": "short", "role": "system_admin"}),
        )
        .await;
    assert_error(
        &weak,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("password"),
    );
    node.shutdown().await;
}

#[tokio::test]
async fn logins_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), 3).await;
    let anonymous = Api::anonymous(node.http.addr);
    let attempt = json!({"username": "someone", "password": "whatever 123"});
    for _ in 0..3 {
        assert_eq!(
            anonymous
                .post("/api/v1/auth/login", attempt.clone())
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = anonymous.post("/api/v1/auth/login", attempt).await;
    assert_error(
        &limited,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    );
    node.shutdown().await;
}

#[tokio::test]
async fn tenants_and_extensions_with_their_refusals() {
    common::init_test_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), 100).await;
    let addr = node.http.addr;
    let (system, acme, _globex) = two_tenants(addr).await;

    // Tenant validation and uniqueness.
    let bad_code = system
        .post(
            "/api/v1/tenants",
            json!({"name": "X", "code": "a/b", "sip_domain": "x.example"}),
        )
        .await;
    assert_error(
        &bad_code,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("code"),
    );
    let bad_zone = system
        .post(
            "/api/v1/tenants",
            json!({"name": "X", "code": "XX", "sip_domain": "x.example", "timezone": "Mars/Base"}),
        )
        .await;
    assert_error(
        &bad_zone,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("timezone"),
    );
    let taken = system
        .post(
            "/api/v1/tenants",
            json!({"name": "X", "code": "acme", "sip_domain": "x.example"}),
        )
        .await;
    assert_error(&taken, StatusCode::CONFLICT, "already_exists", None);
    let missing = system.post("/api/v1/tenants", json!({"name": "X"})).await;
    assert_error(
        &missing,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("code"),
    );
    // A tenant admin cannot create tenants.
    let refused = acme
        .post(
            "/api/v1/tenants",
            json!({"name": "X", "code": "XX", "sip_domain": "x.example"}),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden", None);

    // Bodies: not JSON, the wrong type, unknown fields, too large.
    let raw = reqwest::Client::new();
    let token = acme.token.clone().expect("token");
    let url = format!("http://{addr}/api/v1/tenants/ACME/extensions");
    let not_json = raw
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"number\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let as_text = raw
        .post(&url)
        .bearer_auth(&token)
        .body("number=100")
        .send()
        .await
        .expect("send");
    assert_eq!(as_text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = raw
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"description\": \"{}\"}}",
            "x".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let unknown_field = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "100", "passwd": "x"}),
        )
        .await;
    assert_error(
        &unknown_field,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("passwd"),
    );
    let typed = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "100", "dnd": "yes"}),
        )
        .await;
    assert_error(
        &typed,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("dnd"),
    );
    let nested = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "100", "password": "acme-secret-1",
                   "forwarding": {"busy": {"enabled": true, "destination": "not a number"}}}),
        )
        .await;
    assert_error(
        &nested,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("forwarding.busy.destination"),
    );

    // Create, read, list, replace, delete.
    let full = json!({
        "number": "100", "display_name": "Alex Reed", "password": "acme-secret-1",
        "email": "alex@acme.example", "department": "Sales", "dnd": false,
        "ring_timeout_secs": 25,
        "forwarding": {"busy": {"enabled": true, "destination": "200"},
                       "no_answer": {"enabled": true, "destination": "+390612345"}},
        "find_me_follow_me": {"enabled": true, "number": "+393331234567", "delay_secs": 10},
        "voicemail_enabled": true, "voicemail_pin": "4321",
        "outbound_filter": {"mode": "regex", "pattern": "0[1-9][0-9]+"},
        "max_call_duration_secs": 3600,
        "working_hours": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:30", "end": "18:00"},
        "allowed_registration_cidrs": ["192.0.2.0/24", "2001:db8::1"],
        "external_caller_id": {"number": "+390698765", "name": "Acme"},
        "emergency_caller_id": "+390611111",
        "web_panel_enabled": true, "web_password": "web pass 100",
        "recording": {"inbound": true, "outbound": false}
    });
    let (status, created) = acme.post("/api/v1/tenants/ACME/extensions", full).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["username"], "100-ACME");
    assert_eq!(created["has_voicemail_pin"], true);
    assert_eq!(
        created["allowed_registration_cidrs"],
        json!(["192.0.2.0/24", "2001:db8::1/128"])
    );
    for secret in [
        "password",
        "voicemail_pin",
        "web_password",
        "web_password_hash",
        "ha1_md5",
    ] {
        assert!(created.get(secret).is_none(), "{secret} must not be shown");
    }
    let dup = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "100", "password": "acme-secret-1"}),
        )
        .await;
    assert_error(&dup, StatusCode::CONFLICT, "already_exists", None);
    for (number, name, dept) in [("101", "Bella Stone", "Sales"), ("99", "Carl Zed", "Ops")] {
        let (status, body) = acme
            .post(
                "/api/v1/tenants/ACME/extensions",
                json!({"number": number, "display_name": name, "department": dept, "password": "acme-secret-1",
                       "dnd": number == "99"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, virt) = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "300", "kind": "virtual", "members": ["100", "101"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{virt}");
    let ghost_member = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "301", "kind": "virtual", "members": ["555"]}),
        )
        .await;
    assert_error(
        &ghost_member,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("members[0]"),
    );

    let (_, page) = acme.get("/api/v1/tenants/ACME/extensions").await;
    let numbers: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["number"].as_str().expect("number"))
        .collect();
    assert_eq!(numbers, ["99", "100", "101", "300"]);
    let (_, page) = acme
        .get("/api/v1/tenants/ACME/extensions?filter=department%20eq%20'Sales'&orderby=display_name%20desc")
        .await;
    let names: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["display_name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["Bella Stone", "Alex Reed"]);
    let (_, page) = acme
        .get("/api/v1/tenants/ACME/extensions?search=carl")
        .await;
    assert_eq!(page["count"], 1);
    let (_, page) = acme
        .get("/api/v1/tenants/ACME/extensions?skip=1&top=2")
        .await;
    assert_eq!(page["count"], 4);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_error(
        &acme.get("/api/v1/tenants/ACME/extensions?top=101").await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("top"),
    );
    assert_error(
        &acme
            .get("/api/v1/tenants/ACME/extensions?filter=ha1_md5%20eq%20'x'")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("filter"),
    );
    assert_error(
        &acme.get("/api/v1/tenants/ACME/extensions?skip=-1").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        None,
    );

    // What GET returns, sent back with PUT, changes nothing (secrets kept).
    let (_, before) = acme.get("/api/v1/tenants/ACME/extensions/100").await;
    let mut same = before.clone();
    for shown_only in ["username", "has_voicemail_pin", "has_web_password"] {
        same.as_object_mut().expect("object").remove(shown_only);
    }
    let (status, after) = acme
        .put("/api/v1/tenants/ACME/extensions/100", same.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after, before);
    // The web password still works: the extension's user logs in.
    let user100 = Api::login(addr, "100-ACME", "web pass 100").await;
    assert_eq!(
        user100.get("/api/v1/tenants/ACME/extensions/100").await.0,
        StatusCode::OK
    );
    assert_error(
        &user100.get("/api/v1/tenants/ACME/extensions/101").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_error(
        &user100.get("/api/v1/tenants/ACME/extensions").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    same["dnd"] = json!(true);
    same["ring_timeout_secs"] = json!(40);
    let (_, changed) = acme.put("/api/v1/tenants/ACME/extensions/100", same).await;
    assert_eq!(changed["dnd"], true);
    assert_eq!(changed["ring_timeout_secs"], 40);
    let renumber = acme
        .put(
            "/api/v1/tenants/ACME/extensions/100",
            json!({"number": "101"}),
        )
        .await;
    assert_error(
        &renumber,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("number"),
    );

    // The tenant limit.
    let (status, _) = system
        .put(
            "/api/v1/tenants/ACME",
            json!({"limits": {"max_extensions": 4}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let over = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "102", "password": "acme-secret-1"}),
        )
        .await;
    assert_error(&over, StatusCode::CONFLICT, "limit_reached", None);
    assert_eq!(
        acme.delete("/api/v1/tenants/ACME/extensions/99").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        acme.get("/api/v1/tenants/ACME/extensions/99").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = acme
        .post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "102", "password": "acme-secret-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Roles: a queue manager views extensions but cannot change them; a
    // custom role with only Analytics reads CDRs and no extensions; a
    // tenant admin cannot create a system administrator.
    for (username, role) in [
        ("qm@acme", json!("queue_manager")),
        ("aud@acme", json!({"custom": "auditor"})),
    ] {
        if role.get("custom").is_some() {
            let (s, b) = acme
                .put(
                    "/api/v1/tenants/ACME/roles/auditor",
                    json!({"grants": [{"area": "Analytics", "level": "View Only"}]}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        let (s, b) = acme
            .post("/api/v1/users", json!({"username": username, "password": "member pass 1", "role": role, "tenant_code": "ACME"}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let qm = Api::login(addr, "qm@acme", "member pass 1").await;
    assert_eq!(
        qm.get("/api/v1/tenants/ACME/extensions").await.0,
        StatusCode::OK
    );
    assert_error(
        &qm.post(
            "/api/v1/tenants/ACME/extensions",
            json!({"number": "103", "password": "acme-secret-1"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let auditor = Api::login(addr, "aud@acme", "member pass 1").await;
    assert_eq!(
        auditor.get("/api/v1/tenants/ACME/cdrs").await.0,
        StatusCode::OK
    );
    assert_error(
        &auditor.get("/api/v1/tenants/ACME/extensions").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let escalate = acme
        .post(
            "/api/v1/users",
            json!({"username": "evil", "password": "member pass 1", "role": "system_admin"}),
        )
        .await;
    assert_error(&escalate, StatusCode::FORBIDDEN, "forbidden", None);
    let system_grant = acme
        .put(
            "/api/v1/tenants/ACME/roles/boss",
            json!({"grants": [{"area": "System Tenant", "level": "View Only"}]}),
        )
        .await;
    assert_error(
        &system_grant,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("grants"),
    );
    // Disabling a user ends its access at once.
    let (s, _) = acme
        .put("/api/v1/users/qm@acme", json!({"enabled": false}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(qm.get("/api/v1/auth/me").await.0, StatusCode::UNAUTHORIZED);

    // The audit log names who changed what.
    let (_, audit) = acme.get("/api/v1/tenants/ACME/audit").await;
    let entries: Vec<(String, String, String)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").into(),
                e["action"].as_str().unwrap_or("").into(),
                e["resource"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert!(
        entries.contains(&("admin@acme".into(), "create".into(), "extension 100".into())),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("admin@acme".into(), "delete".into(), "extension 99".into())),
        "{entries:?}"
    );
    assert!(!entries.iter().any(|(_, _, r)| r.contains("GLOBEX")));
    let (_, system_audit) = system.get("/api/v1/audit").await;
    assert!(system_audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|e| e["resource"] == "tenant ACME" && e["actor"] == "admin"));
    assert_error(
        &acme.get("/api/v1/audit").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );

    // Deleting a tenant takes its extensions and users with it.
    assert_eq!(
        system.delete("/api/v1/tenants/ACME").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        system.get("/api/v1/tenants/ACME").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        acme.get("/api/v1/auth/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    node.shutdown().await;
}

/// A body the operation would accept, so that only isolation can refuse
/// it: its content type and text.
/// Creates racing for the tenant's last places never pass its maximum
/// extensions: the count and the write are one guarded step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_pass_the_tenants_maximum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), 30).await;
    let (system, _acme, globex) = two_tenants(node.http.addr).await;
    let (status, body) = system
        .put(
            "/api/v1/tenants/GLOBEX",
            json!({"limits": {"max_extensions": 4}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // GLOBEX has 100: three places left, twelve creates at once.
    let creates = (200..212).map(|number| {
        globex.post(
            "/api/v1/tenants/GLOBEX/extensions",
            json!({"number": number.to_string(), "password": "globex-secret-1"}),
        )
    });
    let results = futures::future::join_all(creates).await;
    let created = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    for (status, body) in &results {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::CONFLICT,
            "{status} {body}"
        );
    }
    let (_, list) = globex.get("/api/v1/tenants/GLOBEX/extensions").await;
    let stored = list["items"].as_array().map_or(0, Vec::len);
    assert!(
        (1..=3).contains(&created),
        "{created} created past a limit of 4 with 1 existing"
    );
    assert_eq!(stored, created + 1, "{list}");
    node.shutdown().await;
}

fn valid_body(template: &str, method: &Method) -> Option<(&'static str, String)> {
    if !matches!(*method, Method::POST | Method::PUT) {
        return None;
    }
    let json = |v: Value| ("application/json", v.to_string());
    Some(if template.ends_with("/import") {
        (
            "text/csv",
            "number,password\n500,acme-secret-1\n".to_string(),
        )
    } else if template.ends_with("/bulk-create") {
        json(json!({"first": "500", "count": 2}))
    } else if template.ends_with("/bulk-delete") {
        json(json!({"numbers": ["100"]}))
    } else if template.contains("/extensions") {
        json(json!({"number": "100", "password": "acme-secret-1"}))
    } else if template.contains("/roles/") {
        json(json!({"grants": []}))
    } else {
        json(json!({}))
    })
}

/// Every path of the OpenAPI document, called by ACME's administrator with
/// GLOBEX's code and GLOBEX's resources in its parameters, answers 404: a
/// tenant admin cannot tell another tenant's things from missing ones.
#[tokio::test]
async fn no_endpoint_reveals_another_tenants_data() {
    common::init_test_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), 100).await;
    let addr = node.http.addr;
    let (_system, acme, globex) = two_tenants(addr).await;
    let (_, globex_key) = globex
        .post("/api/v1/api-keys", json!({"name": "globex-key"}))
        .await;
    let globex_key_id = globex_key["id"].as_str().expect("id").to_string();

    let (status, doc) = acme.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15, "{} paths", paths.len());
    let mut checked = 0;
    for (template, operations) in paths {
        if !template.contains('{') {
            continue;
        }
        let path = template
            .replace("{code}", "GLOBEX")
            .replace("{number}", "100")
            .replace("{username}", "admin@globex")
            .replace("{name}", "auditor")
            .replace("{id}", &globex_key_id);
        assert!(!path.contains('{'), "unknown parameter in {template}");
        for method in operations.as_object().expect("operations").keys() {
            let method =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            let result = acme
                .raw(method.clone(), &path, valid_body(template, &method))
                .await;
            assert_error(&result, StatusCode::NOT_FOUND, "not_found", None);
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} operations checked");
    // And what GLOBEX has is still there.
    assert_eq!(
        globex.get("/api/v1/tenants/GLOBEX/extensions/100").await.0,
        StatusCode::OK
    );
    assert_eq!(
        globex.get("/api/v1/tenants/GLOBEX/roles/auditor").await.0,
        StatusCode::OK
    );
    assert_eq!(
        globex.get("/api/v1/api-keys").await.1["items"][0]["id"],
        globex_key_id
    );
    // Lists show ACME's own only.
    let (_, tenants) = acme.get("/api/v1/tenants").await;
    assert_eq!(tenants["count"], 1);
    assert_eq!(tenants["items"][0]["code"], "ACME");
    let (_, users) = acme.get("/api/v1/users").await;
    assert!(users["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|u| u["tenant_code"] == "ACME"));
    node.shutdown().await;
}

#[tokio::test]
async fn bulk_create_delete_and_csv_round_trip() {
    common::init_test_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), 100).await;
    let addr = node.http.addr;
    let (_system, acme, _globex) = two_tenants(addr).await;

    // A range with a name and password pattern; the passwords come back once.
    let (status, created) = acme
        .post(
            "/api/v1/tenants/ACME/extensions/bulk-create",
            json!({"first": "200", "count": 20, "display_name_pattern": "Desk {number}",
                   "password_pattern": "pw-{number}-{random}"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let items = created["items"].as_array().expect("items");
    assert_eq!(items.len(), 20);
    assert_eq!(items[0]["username"], "200-ACME");
    assert!(items[0]["password"]
        .as_str()
        .is_some_and(|p| p.starts_with("pw-200-") && p.len() == 19));
    let (_, ext) = acme.get("/api/v1/tenants/ACME/extensions/219").await;
    assert_eq!(ext["display_name"], "Desk 219");
    // Overlapping the range creates nothing at all.
    let overlap = acme
        .post(
            "/api/v1/tenants/ACME/extensions/bulk-create",
            json!({"first": "190", "count": 11}),
        )
        .await;
    assert_error(&overlap, StatusCode::CONFLICT, "already_exists", None);
    assert_eq!(
        acme.get("/api/v1/tenants/ACME/extensions/190").await.0,
        StatusCode::NOT_FOUND
    );
    let weak = acme
        .post(
            "/api/v1/tenants/ACME/extensions/bulk-create",
            json!({"first": "300", "count": 2, "password_pattern": "{number}"}),
        )
        .await;
    assert_error(
        &weak,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("password_pattern"),
    );

    // Bulk delete: all named, or nothing.
    let partly_missing = acme
        .post(
            "/api/v1/tenants/ACME/extensions/bulk-delete",
            json!({"numbers": ["200", "999"]}),
        )
        .await;
    assert_error(
        &partly_missing,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("numbers[1]"),
    );
    assert_eq!(
        acme.get("/api/v1/tenants/ACME/extensions/200").await.0,
        StatusCode::OK
    );
    let (status, deleted) = acme
        .post("/api/v1/tenants/ACME/extensions/bulk-delete",
              json!({"numbers": ["210", "211", "212", "213", "214", "215", "216", "217", "218", "219"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["deleted"], 10);
    assert_eq!(
        acme.get("/api/v1/tenants/ACME/extensions").await.1["count"],
        10
    );

    // Give one extension every kind of setting, then export.
    let (status, body) = acme
        .put(
            "/api/v1/tenants/ACME/extensions/200",
            json!({"display_name": "Front, \"Desk\"", "dnd": true, "department": "Lobby",
                   "forwarding": {"busy": {"enabled": false, "destination": "201"}},
                   "working_hours": {"days": ["mon", "fri"], "start": "09:00", "end": "17:30"},
                   "outbound_filter": {"mode": "regex", "pattern": "0[0-9]+"},
                   "allowed_registration_cidrs": ["10.1.0.0/16"], "voicemail_pin": "2468",
                   "recording": {"inbound": true, "outbound": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, csv) = acme
        .raw(
            Method::GET,
            "/api/v1/tenants/ACME/extensions/export.csv",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let csv = csv.as_str().expect("CSV text").to_string();
    assert_eq!(csv.lines().count(), 11, "{csv}");
    assert!(csv
        .lines()
        .next()
        .is_some_and(|h| h.starts_with("number,display_name,username,password,")));
    let (_, before) = acme.get("/api/v1/tenants/ACME/extensions?top=100").await;

    // Re-importing the export changes nothing.
    let (status, report) = acme
        .raw(
            Method::POST,
            "/api/v1/tenants/ACME/extensions/import",
            Some(("text/csv", csv.clone())),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report, json!({"created": 0, "updated": 0, "unchanged": 10}));
    let (_, after) = acme.get("/api/v1/tenants/ACME/extensions?top=100").await;
    assert_eq!(after, before);

    // One bad row among good ones: every bad row reported, nothing written.
    let upload = "number,display_name,password,dnd,forward_busy\n\
                  300,New One,new-secret-1,false,\n\
                  301,Bad Flag,new-secret-1,perhaps,\n\
                  302,Bad Forward,new-secret-1,false,call me\n\
                  303,No Password,,false,\n\
                  200,Renamed,,true,\n";
    let (status, refused) = acme
        .raw(
            Method::POST,
            "/api/v1/tenants/ACME/extensions/import",
            Some(("text/csv", upload.into())),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_rows");
    let rows: Vec<(u64, String)> = refused["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap_or(0),
                r["field"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (3, "dnd".into()),
            (4, "forward_busy".into()),
            (5, "password".into())
        ]
    );
    assert_eq!(
        acme.get("/api/v1/tenants/ACME/extensions/300").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        acme.get("/api/v1/tenants/ACME/extensions/200").await.1["display_name"],
        "Front, \"Desk\""
    );

    // The same file without its bad rows goes in whole.
    let good =
        "number,display_name,password,dnd\n300,New One,new-secret-1,false\n200,Renamed,,true\n";
    let (status, report) = acme
        .raw(
            Method::POST,
            "/api/v1/tenants/ACME/extensions/import",
            Some(("text/csv", good.into())),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report, json!({"created": 1, "updated": 1, "unchanged": 0}));
    let (_, renamed) = acme.get("/api/v1/tenants/ACME/extensions/200").await;
    assert_eq!(renamed["display_name"], "Renamed");
    // A row replaces the settings it does not name with their defaults,
    // and keeps the secrets it leaves empty.
    assert_eq!(renamed["department"], "");
    assert_eq!(renamed["has_voicemail_pin"], true);

    // A header with an unknown column fails the file.
    let (status, body) = acme
        .raw(
            Method::POST,
            "/api/v1/tenants/ACME/extensions/import",
            Some(("text/csv", "number,secret_sauce\n400,x\n".into())),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "file");
    node.shutdown().await;
}
