//! Every preset through the real server: valid, tampered, wrong secret, stale (where the
//! provider signs a timestamp) and a malformed signature header; then rotation and shadow mode.

mod common;

use common::*;

struct Case {
    preset: &'static str,
    secret: &'static str,
    other_secret: &'static str,
    extra: &'static str,
    signature_header: &'static str,
    malformed: &'static str,
    timestamped: bool,
    content_type: &'static str,
}

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_OTHER: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

const CASES: &[Case] = &[
    Case { preset: "standard-webhooks", secret: SW_SECRET, other_secret: SW_OTHER, extra: "", signature_header: "webhook-signature", malformed: "v1,not-base64!!", timestamped: true, content_type: "application/json" },
    Case { preset: "svix", secret: SW_SECRET, other_secret: SW_OTHER, extra: "", signature_header: "svix-signature", malformed: "v1 g0hM9SsE", timestamped: true, content_type: "application/json" },
    Case { preset: "github", secret: "gh", other_secret: "gh2", extra: "", signature_header: "x-hub-signature-256", malformed: "sha256=xyz", timestamped: false, content_type: "application/json" },
    Case { preset: "github-sha1", secret: "gh", other_secret: "gh2", extra: "", signature_header: "x-hub-signature", malformed: "sha1=0123", timestamped: false, content_type: "application/json" },
    Case { preset: "stripe", secret: "whsec_st", other_secret: "whsec_st2", extra: "", signature_header: "stripe-signature", malformed: "t=1,v1=zz", timestamped: true, content_type: "application/json" },
    Case { preset: "slack", secret: "sl", other_secret: "sl2", extra: "", signature_header: "x-slack-signature", malformed: "v0=", timestamped: true, content_type: "application/json" },
    Case { preset: "shopify", secret: "sh", other_secret: "sh2", extra: "", signature_header: "x-shopify-hmac-sha256", malformed: "%%%", timestamped: false, content_type: "application/json" },
    Case { preset: "twilio", secret: "tw", other_secret: "tw2", extra: "public_url: https://hooks.example.com/webhook/twilio\n", signature_header: "x-twilio-signature", malformed: "abc", timestamped: false, content_type: "application/x-www-form-urlencoded" },
    Case { preset: "paddle", secret: "pdl", other_secret: "pdl2", extra: "tolerance: 5m\n", signature_header: "paddle-signature", malformed: "ts=1;h1=", timestamped: true, content_type: "application/json" },
    Case { preset: "square", secret: "sq", other_secret: "sq2", extra: "public_url: https://hooks.example.com/webhook/square\n", signature_header: "x-square-hmacsha256-signature", malformed: "!!", timestamped: false, content_type: "application/json" },
    Case { preset: "zoom", secret: "zm", other_secret: "zm2", extra: "", signature_header: "x-zm-signature", malformed: "v0=nothex", timestamped: true, content_type: "application/json" },
    Case { preset: "linear", secret: "ln", other_secret: "ln2", extra: "", signature_header: "linear-signature", malformed: "zz", timestamped: true, content_type: "application/json" },
    Case { preset: "hmac", secret: "hm", other_secret: "hm2", extra: "signature: { header: X-WSS-Signature, algorithm: sha256, encoding: hex, signed: \"{timestamp}{body}\" }\ntimestamp: { header: X-WSS-Timestamp, format: unix }\n", signature_header: "x-wss-signature", malformed: "00", timestamped: true, content_type: "application/json" },
];

fn filter(case: &Case, secret: &str) -> String {
    let name = case.preset.replace('-', "_");
    format!(
        "name: {name}\npreset: {}\nsecrets: [\"{secret}\"]\n{}",
        case.preset, case.extra
    )
}

/// A body the provider would send at `ts` (Linear carries its timestamp inside the body).
fn body_for(case: &Case, ts: i64, n: u32) -> Vec<u8> {
    match case.preset {
        "twilio" => format!("MessageSid=SM{n}&Body=hello+{n}&From=%2B15550001111").into_bytes(),
        "linear" => format!(
            "{{\"action\":\"create\",\"n\":{n},\"webhookTimestamp\":{}}}",
            ts * 1000
        )
        .into_bytes(),
        _ => format!("{{\"id\":\"evt_{n}\",\"event_id\":\"evt_{n}\",\"n\":{n}}}").into_bytes(),
    }
}

fn headers(case: &Case, secret: &str, body: &[u8], ts: i64, id: &str) -> Vec<(String, String)> {
    sign_as(&filter(case, secret), body, ts, id, case.content_type).headers
}

#[test]
fn every_preset_accepts_valid_and_rejects_tampered_wrong_secret_stale_and_malformed() {
    let files: Vec<(String, String)> = CASES
        .iter()
        .map(|c| (format!("{}.yaml", c.preset), filter(c, c.secret)))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let server = Server::start(&refs, spool_sink());
    for (i, case) in CASES.iter().enumerate() {
        let path = format!("/webhook/{}", case.preset.replace('-', "_"));
        let n = i as u32 * 10;
        let t = now();
        let body = body_for(case, t, n);
        let valid = headers(case, case.secret, &body, t, &format!("id-{n}"));
        let r = server.post(&path, &valid, &body);
        assert_eq!(
            r.status,
            202,
            "{}: valid: {:?}",
            case.preset,
            String::from_utf8_lossy(&r.body)
        );

        let tampered = body_for(case, t, n + 1);
        let r = server.post(&path, &valid, &tampered);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (401, "invalid_signature"),
            "{}: tampered",
            case.preset
        );

        let body = body_for(case, t, n + 2);
        let wrong = headers(case, case.other_secret, &body, t, &format!("id-{}", n + 2));
        let r = server.post(&path, &wrong, &body);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (401, "invalid_signature"),
            "{}: wrong secret",
            case.preset
        );

        if case.timestamped {
            let old = t - 3 * 3600;
            let body = body_for(case, old, n + 3);
            let stale = headers(case, case.secret, &body, old, &format!("id-{}", n + 3));
            let r = server.post(&path, &stale, &body);
            assert_eq!(
                (r.status, r.reason().as_str()),
                (401, "stale_timestamp"),
                "{}: stale",
                case.preset
            );
        }

        let body = body_for(case, t, n + 4);
        let malformed: Vec<(String, String)> =
            headers(case, case.secret, &body, t, &format!("id-{}", n + 4))
                .into_iter()
                .map(|(k, v)| {
                    if k == case.signature_header {
                        (k, case.malformed.to_owned())
                    } else {
                        (k, v)
                    }
                })
                .collect();
        let r = server.post(&path, &malformed, &body);
        assert_eq!(r.status, 401, "{}: malformed", case.preset);
        assert!(
            [
                "invalid_signature",
                "missing_timestamp",
                "missing_signature"
            ]
            .contains(&r.reason().as_str()),
            "{}: malformed gave {}",
            case.preset,
            r.reason()
        );
        let stripped: Vec<(String, String)> = valid
            .iter()
            .filter(|(k, _)| k != case.signature_header)
            .cloned()
            .collect();
        let r = server.post(&path, &stripped, &body_for(case, t, n));
        assert_eq!(
            (r.status, r.reason().as_str()),
            (401, "missing_signature"),
            "{}: no signature header",
            case.preset
        );
    }
    assert_eq!(
        server.spooled().len(),
        CASES.len(),
        "only the valid requests reached the sink"
    );
    assert_eq!(server.admin_get("/healthz").status, 200);
}

#[test]
fn url_key_and_none_presets() {
    let key = "wh_0123456789abcdefghijABCDEFGHIJkl";
    let url_key = format!("name: inbox\npreset: url-key\nsecrets: [\"{key}\"]\n");
    let none = "name: open\npreset: none\nallow: [\"127.0.0.0/8\"]\n";
    let server = Server::start(
        &[("inbox.yaml", &url_key), ("open.yaml", none)],
        spool_sink(),
    );
    assert_eq!(
        server
            .post(&format!("/webhook/inbox/{key}"), &h(&[]), b"{}")
            .status,
        202
    );
    let r = server.post(
        "/webhook/inbox/wh_0123456789abcdefghijABCDEFGHIJkm",
        &h(&[]),
        b"{}",
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "invalid_signature"));
    let r = server.post("/webhook/inbox", &h(&[]), b"{}");
    assert_eq!((r.status, r.reason().as_str()), (401, "missing_signature"));
    assert_eq!(
        server.post("/webhook/open/extra", &h(&[]), b"{}").status,
        404,
        "only url-key routes take a suffix"
    );
    assert_eq!(server.post("/webhook/open", &h(&[]), b"{}").status, 202);
}

#[test]
fn every_active_secret_verifies_during_rotation() {
    let rotating = "name: github\npreset: github\nsecrets: [\"new-secret\", \"old-secret\"]\n";
    let server = Server::start(&[("g.yaml", rotating)], spool_sink());
    for (secret, id) in [("old-secret", "r1"), ("new-secret", "r2")] {
        let f = format!("name: github\npreset: github\nsecrets: [\"{secret}\"]\n");
        let r = server.post("/webhook/github", &sign(&f, b"{}", now(), id), b"{}");
        assert_eq!(r.status, 202, "signed with {secret}");
    }
    let f = "name: github\npreset: github\nsecrets: [\"retired\"]\n";
    assert_eq!(
        server
            .post("/webhook/github", &sign(f, b"{}", now(), "r3"), b"{}")
            .status,
        401
    );
}

#[test]
fn shadow_mode_forwards_failures_with_the_verdict_recorded() {
    let shadow =
        "name: github\npreset: github\nsecrets: [\"s\"]\nmode: shadow\nrequire_fields: [action]\n";
    let server = Server::start(&[("g.yaml", shadow)], spool_sink());
    let good = br#"{"action":"a"}"#;
    assert_eq!(
        server
            .post("/webhook/github", &sign(shadow, good, now(), "s1"), good)
            .status,
        202
    );
    let forged = sign(
        "name: github\npreset: github\nsecrets: [\"other\"]\n",
        good,
        now(),
        "s2",
    );
    let r = server.post("/webhook/github", &forged, good);
    assert_eq!(r.status, 202, "shadow mode forwards anyway");
    let lines = server.spooled();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["verified"], true);
    assert_eq!(lines[1]["verified"], false);
    assert_eq!(lines[1]["reason"], "invalid_signature");
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").body).into_owned();
    assert!(
        metrics.contains(
            "portcullis_rejections_total{provider=\"github\",reason=\"invalid_signature\"} 1"
        ),
        "{metrics}"
    );
}
