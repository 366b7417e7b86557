//! Providers' own SDKs against the real binary, both ways (`tests/sdk/interop.py`): their
//! verifiers accept what `portcullis sign` prints, and `portcullis verify` accepts what they
//! sign and refuses it on a changed body. Standard Webhooks, Svix, Stripe, Slack and Twilio
//! (form, JSON with bodySHA256, SharedKey HMAC-SHA256), at the versions pinned in
//! `tests/sdk/requirements.txt` (`.ci/run` installs them).

use std::process::Command;

const MODULES: &str = "import twilio, stripe, slack_sdk, standardwebhooks, svix";

#[test]
fn provider_sdks_verify_what_we_sign_and_we_verify_what_they_sign() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");
    let present = Command::new("python3")
        .args(["-c", MODULES])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let hint = format!("python3 -m pip install -r {dir}/requirements.txt");
        if std::env::var("PORTCULLIS_REQUIRE_BROKERS").as_deref() == Ok("1") {
            panic!("no provider SDKs for python3 ({hint}), and PORTCULLIS_REQUIRE_BROKERS=1");
        }
        eprintln!("skipped: no provider SDKs for python3 ({hint})");
        return;
    }
    let out = Command::new("python3")
        .arg(format!("{dir}/interop.py"))
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
