//! "Did you mean" for a misspelt name: the closest of the names that would have been taken,
//! when one is close enough to be the likely intent (as clap and cargo suggest).

/// The candidate `name` most likely misspells, if any is close (Jaro-Winkler above 0.8).
pub fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(name, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn a_close_name_is_suggested_and_a_far_one_is_not() {
        let fields = ["name", "desired_servers", "service"];
        assert_eq!(
            did_you_mean("desired_server", &fields),
            Some("desired_servers")
        );
        assert_eq!(did_you_mean("servce", &fields), Some("service"));
        assert_eq!(did_you_mean("zebra", &fields), None);
        assert_eq!(did_you_mean("x", &[]), None);
    }
}
