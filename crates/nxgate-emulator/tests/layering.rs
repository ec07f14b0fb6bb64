//! The emulator's modules import each other one way only: no import circle, however long
//! (the reader is `nxgate_testkit::layering`, shared with the gateway's layering test).

use nxgate_testkit::layering::{find_circles, module_imports};
use std::path::Path;

#[test]
fn the_emulator_modules_import_each_other_one_way_only() {
    let edges = module_imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        edges.get("sim").is_some_and(|to| to.contains("state")) && edges.contains_key("api::tasks"),
        "the reader found the modules and their imports: {edges:?}"
    );
    let circles = find_circles(&edges);
    assert!(circles.is_empty(), "import circles: {circles:#?}\nevery import: {edges:#?}");
}
