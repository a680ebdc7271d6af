//! The TOML config file (`config::parse`): no panic on any text; a file that
//! parses and merges renders (what `check-config` prints) into a config file
//! that parses again.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tun2socks::{cli, config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let file = match config::parse(path, text) {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let matches = cli::command().try_get_matches_from(["tun2socks"]).unwrap();
    let Ok(resolved) = config::merge(&matches, Some(&file), None) else {
        return;
    };
    let rendered = resolved.render();
    if let Err(e) = config::parse(path, &rendered) {
        panic!("check-config output does not parse: {e}\n{rendered}");
    }
});
