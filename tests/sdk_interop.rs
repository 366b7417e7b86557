//! Providers' own SDKs against the real binary: their verifiers accept what `portcullis sign`
//! prints, and where an SDK signs, `portcullis verify` accepts what it signs and refuses it on
//! a changed body. Python (`tests/sdk/interop.py`, pinned in `requirements.txt`): Standard
//! Webhooks, Svix, Stripe, Slack, Twilio (form, JSON with bodySHA256, SharedKey HMAC-SHA256).
//! Node.js (`tests/sdk/interop.mjs`, pinned in `package.json`/`package-lock.json`): Octokit,
//! Shopify, Linear, Zoom, Paddle, Square. `.ci/run` installs both sets.

use std::process::Command;

const MODULES: &str = "import twilio, stripe, slack_sdk, standardwebhooks, svix";
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");

/// False (after saying why) when the SDKs are not installed; a failure under
/// `PORTCULLIS_REQUIRE_BROKERS=1`, so CI cannot skip them silently.
fn present(what: &str, installed: bool, hint: &str) -> bool {
    if installed {
        return true;
    }
    if std::env::var("PORTCULLIS_REQUIRE_BROKERS").as_deref() == Ok("1") {
        panic!("no {what} ({hint}), and PORTCULLIS_REQUIRE_BROKERS=1");
    }
    eprintln!("skipped: no {what} ({hint})");
    false
}

/// Runs one interop script on the binary; every check must pass.
fn run(program: &str, script: &str) {
    let out = Command::new(program)
        .arg(format!("{DIR}/{script}"))
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn python_sdks_verify_what_we_sign_and_we_verify_what_they_sign() {
    let installed = Command::new("python3")
        .args(["-c", MODULES])
        .output()
        .is_ok_and(|o| o.status.success());
    let hint = format!("python3 -m pip install -r {DIR}/requirements.txt");
    if present("provider SDKs for python3", installed, &hint) {
        run("python3", "interop.py");
    }
}

#[test]
fn node_sdks_verify_what_we_sign_and_we_verify_what_octokit_signs() {
    let installed = std::path::Path::new(DIR)
        .join("node_modules/square")
        .exists()
        && Command::new("node").arg("--version").output().is_ok();
    let hint = format!("npm ci --prefix {DIR}");
    if present("provider SDKs for node", installed, &hint) {
        run("node", "interop.mjs");
    }
}
