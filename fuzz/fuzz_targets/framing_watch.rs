//! Fuzzes `proxyguard::fuzz::framing_watch` (see there for the input's layout and what is asserted).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyguard::fuzz::framing_watch(data));
