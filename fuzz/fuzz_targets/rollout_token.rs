//! Fuzzes `proxyguard::fuzz::rollout_token` (see there for what is asserted).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyguard::fuzz::rollout_token(data));
