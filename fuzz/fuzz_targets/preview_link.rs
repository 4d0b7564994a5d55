//! Fuzzes the text of a signed preview link (`slipway_core::preview_link`), which anyone can
//! send a router in a cookie, a header or a query: `parse` must never panic, refuse anything
//! longer than `MAX_LEN`, and accept only text that the link's own payload spells back
//! exactly (one text per link, so the tag signs what is parsed).

#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_core::preview_link::{MAX_LEN, parse, payload};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(link) = parse(&text) {
        assert!(text.len() <= MAX_LEN);
        let spelled = payload(&link.env, link.stack, link.created_at, link.expires_at);
        assert_eq!(spelled, link.payload, "{text}");
        assert_eq!(format!("{}~{}", link.payload, link.tag), text);
    }
});
