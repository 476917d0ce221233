//! Fuzz target: the config loader on any bytes. The properties (never a
//! panic, every refusal located, a loaded config renders and loads again
//! unchanged) are in `pgwarden_core::fuzzing::config_loader`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pgwarden_core::fuzzing::config_loader(data);
});
