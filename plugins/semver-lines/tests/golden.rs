//! Every `semver-lines` golden case in `tests/golden/`, run natively.

#[test]
fn every_golden_case_matches_natively() {
    let dir = golden_cases::manifest_dir(env!("CARGO_MANIFEST_DIR"));
    golden_cases::check_plugin_cases::<semver_lines::SemverLines>(&dir, "semver-lines", 5);
}
