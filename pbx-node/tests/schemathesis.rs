//! schemathesis (PyPI) against the live OpenAPI document of a real node:
//! generated requests to every operation, as the system administrator
//! through an API key, must never get a 500 and every response must match
//! the schema the document gives for it.
//!
//! `tests/run-all.sh` installs schemathesis into a virtualenv and puts it
//! on PATH (or names it in `PBX_SCHEMATHESIS`); without it this test fails.

mod common;

use std::time::Duration;

use common::{admin_token, loopback_config};
use pbx_node::PbxNode;
use serde_json::{json, Value};

/// Generous for a debug build on 2 cores; a normal run takes a few minutes.
const RUN_LIMIT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_no_500_and_match_the_schema() {
    common::init_test_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = PbxNode::start(&loopback_config(1, dir.path()))
        .await
        .expect("start node");
    let addr = node.http.addr;
    let client = reqwest::Client::new();
    let token = admin_token(&client, addr).await;

    // Some data for the generated requests to find: a tenant with an
    // extension, and the API key schemathesis authenticates with (a key,
    // not a session, so a generated logout cannot end the run).
    let post = |path: &str, body: Value| {
        client
            .post(format!("http://{addr}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let tenant = post(
        "/api/v1/tenants",
        json!({"name": "Fuzz", "code": "FUZZ", "sip_domain": "fuzz.example"}),
    )
    .await
    .expect("create tenant");
    assert_eq!(tenant.status().as_u16(), 201);
    let extension = post(
        "/api/v1/tenants/FUZZ/extensions",
        json!({"number": "100", "password": "fuzz-secret-1"}),
    )
    .await
    .expect("create extension");
    assert_eq!(extension.status().as_u16(), 201);
    let key: Value = post("/api/v1/api-keys", json!({"name": "schemathesis"}))
        .await
        .expect("create API key")
        .json()
        .await
        .expect("API key body");
    let key = key["key"].as_str().expect("key").to_string();

    let program = std::env::var("PBX_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let work = tempfile::tempdir().expect("tempdir");
    let mut command = tokio::process::Command::new(&program);
    command
        .current_dir(work.path())
        .args(["run", &format!("http://{addr}/api/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "30"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "20"])
        .args(["--seed", "6"])
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true);
    let output = match tokio::time::timeout(RUN_LIMIT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot run {program} (run tests/run-all.sh, which installs it): {e}"),
        Err(_) => panic!("schemathesis did not finish within {RUN_LIMIT:?}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    // It must really have exercised the API, not stopped at the document:
    // some phase reports "<n> passed" with n > 0.
    let pieces: Vec<&str> = stdout.split(" passed").collect();
    let most_passed = pieces[..pieces.len() - 1]
        .iter()
        .filter_map(|before| {
            before
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_passed > 0,
        "schemathesis ran no operation:\n{stdout}\n{stderr}"
    );
    node.shutdown().await;
}
