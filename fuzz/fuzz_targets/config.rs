//! Config loading (`portcullis check`, `run`): arbitrary text as a filter file and as a server
//! file. Every problem must come back as a diagnostic with a line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = std::env::temp_dir();
    let (_, problems) = portcullis::loader::load_filter_text(&dir.join("fuzz-filter.yaml"), text);
    for problem in &problems {
        let _ = problem.to_string();
    }
    let (_, problems) = portcullis::loader::load_server_text(&dir.join("fuzz-server.yaml"), text);
    for problem in &problems {
        let _ = problem.to_string();
    }
});
