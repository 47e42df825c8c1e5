//! Every `gitlab-retention` golden case in `tests/golden/` (cases without a `plugin` file),
//! run natively and compared with `expected.json`. The host runs the same files through the
//! Wasm runtime; this proves the files themselves right.

#[test]
fn every_golden_case_matches_natively() {
    let dir = golden_cases::manifest_dir(env!("CARGO_MANIFEST_DIR"));
    golden_cases::check_plugin_cases::<gitlab_retention::GitlabRetention>(&dir, "gitlab-retention", 22);
}
