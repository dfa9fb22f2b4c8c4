//! Embeds the built-in profiles already parsed: each one's merged profile
//! (`Loader::builtin_only().load(name)`) as JSON, read back by
//! `Loader::load_preloaded` at each launch instead of parsing the TOML of
//! its `extends` chain again (see `profiles::PRELOADED`).

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let loader = policy::Loader::builtin_only();
    let mut table = String::from("pub const PRELOADED: &[(&str, &str)] = &[\n");
    for (name, _) in policy::source::BUILTIN {
        // The policy tests name what is wrong with a built-in profile; the
        // build only refuses to go on.
        let profile = loader.load(name).unwrap_or_else(|e| panic!("built-in profile {name}: {e}"));
        let json = serde_json::to_string(&profile).expect("a profile serializes");
        std::fs::write(out.join(format!("{name}.json")), json).expect("OUT_DIR is writable");
        writeln!(table, "    ({name:?}, include_str!(concat!(env!(\"OUT_DIR\"), \"/{name}.json\"))),").unwrap();
    }
    table.push_str("];\n");
    std::fs::write(out.join("preloaded.rs"), table).expect("OUT_DIR is writable");
}
