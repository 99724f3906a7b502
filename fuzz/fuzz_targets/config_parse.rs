//! The config parser must answer every UTF-8 text with a `Config` or a `ConfigError`, never panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match cachegate::config::from_str(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            // Exercise the derived views of a valid config too.
            let _ = config.inactive_features();
        }
        Err(e) => {
            // Rendering the error walks every issue and its line.
            let _ = e.to_string();
        }
    }
});
