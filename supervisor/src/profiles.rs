//! The built-in profiles, parsed when the binary was built (build.rs).

// `PRELOADED`: (name, the merged profile as JSON) for each built-in
// profile, for `policy::Loader::load_preloaded`.
include!(concat!(env!("OUT_DIR"), "/preloaded.rs"));

#[cfg(test)]
mod tests {
    use super::PRELOADED;

    #[test]
    fn every_builtin_is_preloaded_as_it_parses() {
        let loader = policy::Loader::builtin_only();
        assert_eq!(PRELOADED.len(), policy::source::BUILTIN.len());
        for (name, _) in policy::source::BUILTIN {
            let (_, json) = PRELOADED.iter().find(|(n, _)| n == name).expect("preloaded");
            // Read back as such, not through the fallback to parsing.
            let pre: policy::Profile = serde_json::from_str(json).expect("the embedded JSON reads back");
            let parsed = serde_json::to_value(loader.load(name).unwrap()).unwrap();
            assert_eq!(serde_json::to_value(&pre).unwrap(), parsed, "{name}");
            let loaded = loader.load_preloaded(name, PRELOADED).unwrap();
            assert_eq!(serde_json::to_value(loaded).unwrap(), parsed, "{name}");
        }
    }
}
