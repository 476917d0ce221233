//! Fuzz target: the INI rewriter. The input is a file, then (NUL-separated,
//! optional) a section and key/value updates; the properties (every byte it
//! does not change is kept, the values read back, a second run changes
//! nothing) are in `pgwarden_core::fuzzing::IniCase::check`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden_core::fuzzing::IniCase;

fuzz_target!(|data: &[u8]| {
    IniCase::from_bytes(data).check();
});
