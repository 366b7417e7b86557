//! `portcullis verify`'s input: a captured raw HTTP/1.1 request, parsed (head, chunked or sized
//! body) and then verified by a github filter. Any bytes: an error is fine, a panic is the bug.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::filters::config::Filter;

fn github() -> &'static Filter {
    static FILTER: OnceLock<Filter> = OnceLock::new();
    FILTER.get_or_init(|| {
        let yaml =
            "name: github\npreset: github\nsecrets: [\"s3cret\"]\nrequire_fields: [action]\n";
        let (filter, problems) =
            portcullis::loader::load_filter_text(std::path::Path::new("github.yaml"), yaml);
        filter.unwrap_or_else(|| panic!("{problems:?}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = portcullis::rawhttp::parse(data) else {
        return;
    };
    let req = parsed.inbound();
    let filter = github();
    let _ = filter.scheme.verify(&req, 1_700_000_000);
    let chain = portcullis::filters::chain(filter);
    let _ = portcullis::filters::check_body(&chain, &req, 1_700_000_000, false);
    let _ = portcullis::filters::dedup::event_id(&filter.event_id, &req);
});
