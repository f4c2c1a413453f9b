//! The web portal against a real node: its refusals over plain HTTP (no
//! session → the login page; a form without the session's CSRF token → 403
//! and no change; a tenant administrator never reaches another tenant; a
//! user without write permission gets no write buttons and 403 on a
//! forged POST; output is escaped; the session is the API's, so logging
//! out revokes it for both), and the whole flow in headless Chromium
//! (`tests/portal/portal.mjs`, driven by playwright-core), which saves a
//! screenshot of each page.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{loopback_config, ADMIN_PASSWORD};
use pbx_node::PbxNode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const TENANT_PASSWORD: &str = "tenant pass 1";

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// An API client with a bearer token, to set up and check data.
struct Api {
    client: Client,
    base: String,
    token: String,
}

impl Api {
    async fn login(addr: SocketAddr, username: &str, password: &str) -> Api {
        let client = client();
        let base = format!("http://{addr}");
        let response = client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), StatusCode::OK, "API login {username}");
        let body: Value = response.json().await.expect("login body");
        let token = body["token"].as_str().expect("token").to_string();
        Api {
            client,
            base,
            token,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A browser without JavaScript: cookies kept by hand, redirects not
/// followed, so each answer can be checked.
struct Browser {
    client: Client,
    base: String,
    cookies: Vec<(String, String)>,
}

/// A page answer: status, redirect target and body.
struct Page {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Page {
    /// The CSRF token the page's forms carry.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("a form with a CSRF field in:\n{}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end of the value")].to_string()
    }
}

impl Browser {
    fn new(addr: SocketAddr) -> Browser {
        Browser {
            client: client(),
            base: format!("http://{addr}"),
            cookies: Vec::new(),
        }
    }

    async fn login(addr: SocketAddr, username: &str, password: &str) -> Browser {
        let mut browser = Browser::new(addr);
        let form = browser.get("/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        let done = browser
            .post(
                "/login",
                &[
                    ("csrf", &csrf),
                    ("username", username),
                    ("password", password),
                ],
            )
            .await;
        assert_eq!(
            done.status,
            StatusCode::SEE_OTHER,
            "login {username}: {}",
            done.body
        );
        assert_eq!(done.location.as_deref(), Some("/extensions"));
        assert!(browser.cookie("pbx_session").is_some(), "a session cookie");
        browser
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.retain(|(k, _)| k != name);
        if !value.is_empty() {
            self.cookies.push((name.to_string(), value.to_string()));
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let mut request = request;
        if !self.cookies.is_empty() {
            let header = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header(COOKIE, header);
        }
        let response = request.send().await.expect("request");
        for value in response.headers().get_all(SET_COOKIE) {
            let text = value.to_str().expect("ASCII cookie");
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            self.set_cookie(name, value);
        }
        Page {
            status: response.status(),
            location: response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: response.text().await.expect("body"),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, pairs: &[(&str, &str)]) -> Page {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            form.append_pair(k, v);
        }
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.finish());
        self.send(request).await
    }
}

/// A node with tenants ACME and GLOBEX, each with an administrator and
/// extension 100 (GLOBEX's also 555, which ACME does not have).
async fn node_with_two_tenants(dir: &Path) -> (PbxNode, Api) {
    let node = PbxNode::start(&loopback_config(1, dir))
        .await
        .expect("start node");
    let system = Api::login(node.http.addr, "admin", ADMIN_PASSWORD).await;
    for code in ["ACME", "GLOBEX"] {
        let lower = code.to_lowercase();
        let (status, body) = system
            .call(
                Method::POST,
                "/api/v1/tenants",
                Some(json!({"name": format!("{code} Corp"), "code": code,
                            "sip_domain": format!("{lower}.example")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = system
            .call(
                Method::POST,
                "/api/v1/users",
                Some(
                    json!({"username": format!("admin@{lower}"), "password": TENANT_PASSWORD,
                            "role": "tenant_admin", "tenant_code": code}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        for number in ["100", "555"]
            .iter()
            .take(if code == "ACME" { 1 } else { 2 })
        {
            let (status, body) = system
                .call(
                    Method::POST,
                    &format!("/api/v1/tenants/{code}/extensions"),
                    Some(
                        json!({"number": number, "display_name": format!("{code} {number}"),
                                "password": format!("{lower}-secret-{number}")}),
                    ),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    (node, system)
}

async fn extension_exists(api: &Api, code: &str, number: &str) -> bool {
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/api/v1/tenants/{code}/extensions/{number}"),
            None,
        )
        .await;
    status == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_every_page_leads_to_the_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    let mut anonymous = Browser::new(node.http.addr);
    for path in [
        "/",
        "/extensions",
        "/extensions/100",
        "/extensions/new",
        "/extensions/export.csv",
        "/users",
        "/roles",
        "/audit",
    ] {
        let page = anonymous.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(page.location.as_deref(), Some("/login"), "{path}");
    }
    // A POST without a session changes nothing, whatever it carries.
    let page = anonymous
        .post(
            "/extensions/new",
            &[
                ("csrf", "x"),
                ("kind", "phone"),
                ("number", "300"),
                ("password", "sneaky-pass-1"),
            ],
        )
        .await;
    assert_eq!(page.location.as_deref(), Some("/login"));
    // A made-up or ended session is no session.
    anonymous.set_cookie("pbx_session", "not-a-session");
    let page = anonymous.get("/extensions").await;
    assert_eq!(page.location.as_deref(), Some("/login"));
    assert!(!extension_exists(&system, "ACME", "300").await);
    // The login page itself, and the assets, need none.
    assert_eq!(anonymous.get("/login").await.status, StatusCode::OK);
    assert_eq!(
        anonymous.get("/assets/portal.css").await.status,
        StatusCode::OK
    );
    assert_eq!(
        anonymous.get("/assets/portal.js").await.status,
        StatusCode::OK
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_the_sessions_csrf_token_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    let addr = node.http.addr;
    let mut admin = Browser::login(addr, "admin@acme", TENANT_PASSWORD).await;
    let mut other = Browser::login(addr, "admin@acme", TENANT_PASSWORD).await;
    let own_csrf = admin.get("/extensions/new").await.csrf();
    let others_csrf = other.get("/extensions/new").await.csrf();
    assert_ne!(own_csrf, others_csrf, "each session has its own token");
    let new_phone = vec![
        ("kind", "phone"),
        ("number", "300"),
        ("password", "forged-pass-300"),
    ];
    let forged = [
        ("no", None),
        ("another session's", Some(others_csrf.as_str())),
        ("a wrong", Some("0000")),
    ];
    for (what, token) in forged {
        let mut pairs = new_phone.clone();
        if let Some(token) = token {
            pairs.push(("csrf", token));
        }
        let page = admin.post("/extensions/new", &pairs).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{what} token: {}",
            page.body
        );
        assert!(page.body.contains("Nothing was changed"), "{}", page.body);
    }
    for (path, pairs) in [
        (
            "/extensions/100",
            vec![("kind", "phone"), ("number", "100"), ("dnd", "on")],
        ),
        (
            "/extensions/bulk-delete",
            vec![("numbers", "100"), ("confirmed", "yes")],
        ),
        (
            "/users",
            vec![
                ("username", "intruder"),
                ("password", "intruder pass 1"),
                ("role", "tenant_admin"),
            ],
        ),
        ("/roles", vec![("name", "sneaky"), ("grant.Users", "full")]),
        ("/logout", vec![]),
    ] {
        let page = admin.post(path, &pairs).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.body);
    }
    assert!(!extension_exists(&system, "ACME", "300").await);
    let (_, ext) = system
        .call(Method::GET, "/api/v1/tenants/ACME/extensions/100", None)
        .await;
    assert_eq!(ext["dnd"], false, "the forged edit changed nothing");
    let (status, _) = system
        .call(Method::GET, "/api/v1/users/intruder", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The refused logout left the session alive.
    assert_eq!(admin.get("/extensions").await.status, StatusCode::OK);
    // With its own token the same form works.
    let mut pairs = new_phone.clone();
    pairs.push(("csrf", own_csrf.as_str()));
    let page = admin.post("/extensions/new", &pairs).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert!(extension_exists(&system, "ACME", "300").await);

    // The login form has its own double-submit token.
    let mut fresh = Browser::new(addr);
    let login = fresh.get("/login").await;
    let again = fresh.get("/login").await;
    assert_eq!(login.csrf(), again.csrf(), "two open login forms both work");
    let page = fresh
        .post(
            "/login",
            &[
                ("csrf", "forged"),
                ("username", "admin@acme"),
                ("password", TENANT_PASSWORD),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(fresh.cookie("pbx_session").is_none());
    let page = fresh
        .post(
            "/login",
            &[
                ("csrf", &login.csrf()),
                ("username", "admin@acme"),
                ("password", TENANT_PASSWORD),
            ],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::FORBIDDEN,
        "the failed attempt used the token up"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_administrator_never_sees_another_tenant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    let mut acme = Browser::login(node.http.addr, "admin@acme", TENANT_PASSWORD).await;
    // The tenant cookie of a system administrator's switcher means nothing
    // to a tenant administrator.
    acme.set_cookie("pbx_tenant", "GLOBEX");
    let list = acme.get("/extensions").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("ACME 100"), "{}", list.body);
    assert!(!list.body.contains("GLOBEX"), "{}", list.body);
    assert!(
        !list.body.contains("tenant-switch"),
        "no switcher for a tenant admin"
    );
    // GLOBEX's 555 does not exist for ACME, read or written.
    let page = acme.get("/extensions/555").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let csrf = list.csrf();
    let page = acme
        .post(
            "/extensions/555",
            &[
                ("csrf", &csrf),
                ("kind", "phone"),
                ("number", "555"),
                ("dnd", "on"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let page = acme
        .post("/tenant", &[("csrf", &csrf), ("tenant", "GLOBEX")])
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let page = acme
        .post(
            "/extensions/bulk-delete",
            &[("csrf", &csrf), ("numbers", "555"), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "555 is not ACME's");
    assert!(extension_exists(&system, "GLOBEX", "555").await);
    let (_, ext) = system
        .call(Method::GET, "/api/v1/tenants/GLOBEX/extensions/555", None)
        .await;
    assert_eq!(ext["dnd"], false);
    for path in ["/users", "/audit", "/extensions/export.csv"] {
        let page = acme.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(!page.body.contains("GLOBEX"), "{path}: {}", page.body);
        assert!(!page.body.contains("admin@globex"), "{path}: {}", page.body);
    }

    // The system administrator switches between them.
    let mut admin = Browser::login(node.http.addr, "admin", ADMIN_PASSWORD).await;
    let list = admin.get("/extensions").await;
    assert!(list.body.contains("tenant-switch"));
    assert!(
        list.body.contains("ACME 100"),
        "the first tenant by default"
    );
    let page = admin
        .post("/tenant", &[("csrf", &list.csrf()), ("tenant", "GLOBEX")])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let list = admin.get("/extensions").await;
    assert!(list.body.contains("GLOBEX 555"), "{}", list.body);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_write_permission_no_write_buttons_and_a_forged_post_gets_403() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    // A queue manager holds Users: View Only.
    let (status, body) = system
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "qm@acme", "password": TENANT_PASSWORD,
                        "role": "queue_manager", "tenant_code": "ACME"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut viewer = Browser::login(node.http.addr, "qm@acme", TENANT_PASSWORD).await;
    let list = viewer.get("/extensions").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("ACME 100"));
    for button in ["new-extension", "bulk-delete", "import-csv", "data-row"] {
        assert!(!list.body.contains(button), "no {button} for a viewer");
    }
    let edit = viewer.get("/extensions/100").await;
    assert_eq!(edit.status, StatusCode::OK);
    assert!(!edit.body.contains("id=\"save\""), "no save button");
    assert!(!edit.body.contains("delete-extension"), "no delete button");
    let csrf = list.csrf();
    for (path, pairs) in [
        (
            "/extensions/new",
            vec![
                ("kind", "phone"),
                ("number", "301"),
                ("password", "viewer-pass-301"),
            ],
        ),
        (
            "/extensions/100",
            vec![("kind", "phone"), ("number", "100"), ("dnd", "on")],
        ),
        (
            "/extensions/bulk-delete",
            vec![("numbers", "100"), ("confirmed", "yes")],
        ),
        (
            "/extensions/bulk-create",
            vec![("first", "400"), ("count", "2")],
        ),
        (
            "/roles",
            vec![("name", "sneaky"), ("grant.Analytics", "view")],
        ),
    ] {
        let mut pairs = pairs;
        pairs.push(("csrf", &csrf));
        let page = viewer.post(path, &pairs).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.body);
        assert!(
            page.body.starts_with("<!DOCTYPE html>"),
            "an HTML page: {}",
            page.body
        );
        assert!(
            page.body.contains("needs Users: Full Access"),
            "{path}: {}",
            page.body
        );
    }
    assert!(!extension_exists(&system, "ACME", "301").await);
    assert!(!extension_exists(&system, "ACME", "400").await);
    assert!(extension_exists(&system, "ACME", "100").await);
    let (_, roles) = system
        .call(Method::GET, "/api/v1/tenants/ACME/roles", None)
        .await;
    assert_eq!(roles["items"], json!([]));

    // An extension's user (web user panel) reads its own extension only.
    let (status, body) = system
        .call(
            Method::PUT,
            "/api/v1/tenants/ACME/extensions/100",
            Some(json!({"web_panel_enabled": true, "web_password": "panel pass 100"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut own = Browser::login(node.http.addr, "100-ACME", "panel pass 100").await;
    let page = own.get("/extensions").await;
    assert_eq!(page.location.as_deref(), Some("/extensions/100"));
    let page = own.get("/extensions/100").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("My extension"));
    assert!(!page.body.contains("id=\"save\""));
    let csrf = page.csrf();
    let page = own
        .post(
            "/extensions/100",
            &[
                ("csrf", &csrf),
                ("kind", "phone"),
                ("number", "100"),
                ("dnd", "on"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    for path in ["/users", "/audit", "/extensions/export.csv"] {
        assert_eq!(own.get(path).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_session_is_the_apis_and_output_is_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    let addr = node.http.addr;
    let mut fresh = Browser::new(addr);
    let login = fresh.get("/login").await;
    let response = client()
        .post(format!("http://{addr}/login"))
        .header(COOKIE, format!("pbx_login_csrf={}", login.csrf()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={}&username=admin%40acme&password=tenant+pass+1",
            login.csrf()
        ))
        .send()
        .await
        .expect("login");
    let session_cookie = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pbx_session="))
        .expect("a session cookie")
        .to_string();
    assert!(session_cookie.contains("HttpOnly"), "{session_cookie}");
    assert!(
        session_cookie.contains("SameSite=Strict"),
        "{session_cookie}"
    );

    let mut acme = Browser::login(addr, "admin@acme", TENANT_PASSWORD).await;
    let token = acme.cookie("pbx_session").expect("token").to_string();
    let api = Api {
        client: client(),
        base: format!("http://{addr}"),
        token,
    };
    let (status, me) = api.call(Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the cookie's token is an API session"
    );
    assert_eq!(me["username"], "admin@acme");

    // Whatever a user typed is shown as text, never as markup.
    let (status, body) = system
        .call(
            Method::PUT,
            "/api/v1/tenants/ACME/extensions/100",
            Some(json!({"display_name": "<script>alert(1)</script>\"'&"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in ["/extensions", "/extensions/100"] {
        let page = acme.get(path).await;
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}"
        );
        assert!(!page.body.contains("<script>alert"), "{path}");
    }
    let search = acme.get("/extensions?search=%22%3E%3Cimg+src%3Dx%3E").await;
    assert!(!search.body.contains("<img src=x>"), "{}", search.body);

    // Logging out of the portal ends the API session too.
    let csrf = acme.get("/extensions").await.csrf();
    let page = acme.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(page.location.as_deref(), Some("/login"));
    let (status, _) = api.call(Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_follow_the_apis_rules_with_messages_beside_the_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    let mut acme = Browser::login(node.http.addr, "admin@acme", TENANT_PASSWORD).await;
    let users = acme.get("/users").await;
    assert!(users.body.contains("admin@acme"));
    assert!(!users.body.contains("admin@globex"));
    let csrf = users.csrf();
    // The API's password policy, shown beside the password field.
    let page = acme
        .post(
            "/users",
            &[
                ("csrf", &csrf),
                ("username", "clerk@acme"),
                ("password", "short"),
                ("display_name", "Clerk"),
                ("role", "queue_manager"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(
        page.body.contains("id=\"u-password-error\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("value=\"Clerk\""),
        "the form keeps what was typed"
    );
    let page = acme
        .post(
            "/users",
            &[
                ("csrf", &csrf),
                ("username", "clerk@acme"),
                ("password", "clerk pass 12"),
                ("display_name", "Clerk"),
                ("role", "queue_manager"),
            ],
        )
        .await;
    assert_eq!(
        page.location.as_deref(),
        Some("/users?done=created"),
        "{}",
        page.body
    );
    let (_, clerk) = system
        .call(Method::GET, "/api/v1/users/clerk@acme", None)
        .await;
    assert_eq!(clerk["tenant_code"], "ACME");
    assert_eq!(clerk["role"], "queue_manager");
    // A tenant administrator cannot make a system administrator.
    let page = acme
        .post(
            "/users/clerk@acme",
            &[
                ("csrf", &csrf),
                ("display_name", "Clerk"),
                ("role", "system_admin"),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    // Disabling works, and the clerk's portal session stops at once.
    let mut clerk_browser = Browser::login(node.http.addr, "clerk@acme", "clerk pass 12").await;
    assert_eq!(
        clerk_browser.get("/extensions").await.status,
        StatusCode::OK
    );
    let page = acme
        .post(
            "/users/clerk@acme",
            &[
                ("csrf", &csrf),
                ("display_name", "Clerk Kent"),
                ("role", "queue_manager"),
            ],
        )
        .await;
    assert_eq!(
        page.location.as_deref(),
        Some("/users/clerk@acme?done=updated"),
        "{}",
        page.body
    );
    let (_, clerk) = system
        .call(Method::GET, "/api/v1/users/clerk@acme", None)
        .await;
    assert_eq!(clerk["enabled"], false);
    assert_eq!(clerk["display_name"], "Clerk Kent");
    assert_eq!(
        clerk_browser.get("/extensions").await.location.as_deref(),
        Some("/login")
    );

    // A custom role: only the grants the administrator holds.
    let page = acme
        .post(
            "/roles",
            &[
                ("csrf", &csrf),
                ("name", "Bad Name!"),
                ("grant.Analytics", "view"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("id=\"r-name-error\""), "{}", page.body);
    let page = acme
        .post(
            "/roles",
            &[
                ("csrf", &csrf),
                ("name", "auditor"),
                ("grant.Analytics", "view"),
                ("grant.Users", ""),
            ],
        )
        .await;
    assert_eq!(
        page.location.as_deref(),
        Some("/roles?done=saved"),
        "{}",
        page.body
    );
    let (_, role) = system
        .call(Method::GET, "/api/v1/tenants/ACME/roles/auditor", None)
        .await;
    assert_eq!(
        role["grants"],
        json!([{"area": "Analytics", "level": "View Only"}])
    );
    assert!(acme
        .get("/roles")
        .await
        .body
        .contains("Analytics: View Only"));
    let page = acme.post("/roles/auditor/delete", &[("csrf", &csrf)]).await;
    assert_eq!(page.location.as_deref(), Some("/roles?done=role-deleted"));

    // The audit log shows what the portal did, under the portal user's name.
    let audit = acme.get("/audit").await;
    for entry in ["user clerk@acme", "role auditor"] {
        assert!(audit.body.contains(entry), "{entry}: {}", audit.body);
    }
    // A system administrator also sees the system administrators.
    let mut admin = Browser::login(node.http.addr, "admin", ADMIN_PASSWORD).await;
    let users = admin.get("/users").await;
    assert!(
        users.body.contains("href=\"/users/admin\""),
        "{}",
        users.body
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_create_then_page_sort_and_choose_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    let mut acme = Browser::login(node.http.addr, "admin@acme", TENANT_PASSWORD).await;
    let csrf = acme.get("/extensions/bulk-create").await.csrf();
    // The API's refusal, beside the field it names.
    let page = acme
        .post(
            "/extensions/bulk-create",
            &[("csrf", &csrf), ("first", "200"), ("count", "5000")],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("id=\"f-count-error\""), "{}", page.body);
    let page = acme
        .post(
            "/extensions/bulk-create",
            &[
                ("csrf", &csrf),
                ("first", "200"),
                ("count", "30"),
                ("display_name_pattern", "Desk {number}"),
                ("password_pattern", ""),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("30 extensions were created"),
        "{}",
        page.body
    );
    assert_eq!(
        page.body.matches("<td class=\"mono\">").count(),
        30,
        "each password shown once"
    );
    let (_, desk) = system
        .call(Method::GET, "/api/v1/tenants/ACME/extensions/229", None)
        .await;
    assert_eq!(desk["display_name"], "Desk 229");

    // 31 extensions: page 2 of 10 a page, the default order by number.
    let page = acme.get("/extensions?size=10&page=2").await;
    assert!(page.body.contains("Showing 11–20 of 31"), "{}", page.body);
    assert!(page.body.contains("href=\"/extensions/209\""));
    assert!(!page.body.contains("href=\"/extensions/219\""));
    assert!(page.body.contains("id=\"next-page\""));
    // Sorted by number, descending: 229 first.
    let page = acme.get("/extensions?sort=number&desc=1&size=10").await;
    let first_row = page
        .body
        .find("href=\"/extensions/229\"")
        .expect("229 listed");
    let later_row = page
        .body
        .find("href=\"/extensions/220\"")
        .expect("220 listed");
    assert!(first_row < later_row);
    assert!(!page.body.contains("href=\"/extensions/100\""));
    // Searched, and with the columns chosen: email and kind only.
    let page = acme
        .get("/extensions?search=Desk+21&cols=number&cols=email&cols=kind")
        .await;
    assert!(page.body.contains("Showing 1–10 of 10"), "{}", page.body);
    let head = page
        .body
        .split("<thead>")
        .nth(1)
        .and_then(|rest| rest.split("</thead>").next())
        .expect("a table head");
    assert!(head.contains(">Email<"), "{head}");
    assert!(head.contains(">Kind<"), "{head}");
    assert!(!head.contains(">Department<"), "{head}");
    // A page far beyond the end is empty, not an error.
    let page = acme.get("/extensions?page=18446744073709551615").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("No extensions match"), "{}", page.body);
    assert!(page.body.contains("Showing 0–0 of 31"), "{}", page.body);
    assert!(!page.body.contains("next-page"));
    // A bad page or sort is no error, just the default.
    let page = acme.get("/extensions?page=0&size=7&sort=ha1_md5").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Showing 1–25 of 31"), "{}", page.body);
    node.shutdown().await;
}

/// Where the browser test's screenshots go: `PBX_PORTAL_SCREENSHOTS`, else
/// `portal-screenshots` in cargo's temporary directory under the target dir.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("PBX_PORTAL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots"))
}

/// The flow in headless Chromium: log in, create an extension,
/// find it by search, edit it, import a CSV with one bad row and see the
/// report, delete it; every page photographed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_works_in_a_real_browser() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/portal");
    assert!(
        here.join("node_modules/playwright-core").exists(),
        "run `npm ci` in pbx-node/tests/portal (tests/run-all.sh does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, system) = node_with_two_tenants(dir.path()).await;
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    // Straight to stderr, past the test harness's capture: where the
    // artifacts are is worth seeing even when the test passes.
    let _ = writeln!(std::io::stderr(), "portal screenshots: {}", shots.display());
    let run = tokio::process::Command::new("node")
        .arg(here.join("portal.mjs"))
        .arg(format!("http://{}", node.http.addr))
        .args(["admin", ADMIN_PASSWORD, "GLOBEX"])
        .arg(&shots)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test ends in time")
        .expect("node must be installed (Debian package nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let results: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no results from the browser:\n{stdout}\n{stderr}"));
    assert!(
        output.status.success() && results["failure"].is_null(),
        "{results}\n{stderr}"
    );
    let steps: Vec<&str> = results["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for expected in [
        "login",
        "tenant switch",
        "create",
        "search",
        "edit",
        "kinds",
        "import report",
        "bulk create",
        "columns",
        "export",
        "delete",
        "users roles audit",
        "logout",
    ] {
        assert!(steps.contains(&expected), "{expected} passed: {results}");
    }
    let screenshots: Vec<&str> = results["screenshots"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        screenshots.len() >= 14,
        "a screenshot of each page: {results}"
    );
    for file in &screenshots {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{file} is a real image");
    }
    let _ = writeln!(
        std::io::stderr(),
        "{} portal screenshots in {}",
        screenshots.len(),
        shots.display()
    );
    // What the browser did is what the API sees.
    for number in ["250", "270", "280"] {
        assert!(
            !extension_exists(&system, "GLOBEX", number).await,
            "{number} deleted"
        );
    }
    assert!(
        !extension_exists(&system, "GLOBEX", "260").await,
        "import refused whole"
    );
    assert!(
        !extension_exists(&system, "ACME", "250").await,
        "in GLOBEX only"
    );
    node.shutdown().await;
}
