//! Stop strings with hold-back: text that could still become a stop string is kept until it is known
//! not to be one, so a stop string never leaks into the output, and nothing else is lost or repeated.

/// What feeding new text produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit now (possibly empty).
    Emit(String),
    /// A stop string matched: emit the text before it, then finish.
    Stopped { emit: String, stop: String },
}

/// Watches generated text for any of a request's stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i);
        if let Some((i, stop)) = first {
            let stop = stop.clone();
            let emit = self.held[..i].to_string();
            self.held.clear();
            return StopOutcome::Stopped { emit, stop };
        }
        let keep = self.partial_suffix_len();
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopOutcome::Emit(emit)
    }

    /// Releases held text when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of some stop string.
    fn partial_suffix_len(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| &self.held[i..])
            .find(|suffix| self.stops.iter().any(|s| s.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Emit(t) => out.push_str(&t),
                StopOutcome::Stopped { emit, .. } => {
                    out.push_str(&emit);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_never_leaks() {
        assert_eq!(
            feed(&["</s>"], &["Hello <", "/", "s> more"]),
            ("Hello ".into(), true)
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(
            feed(&["STOP"], &["a ST", "ART b"]),
            ("a START b".into(), false)
        );
    }

    #[test]
    fn partial_stop_at_end_is_flushed() {
        assert_eq!(
            feed(&["\n\nUser:"], &["done\n", "\nUs"]),
            ("done\n\nUs".into(), false)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["world".into(), "lo".into()]);
        assert_eq!(
            m.push("hello world"),
            StopOutcome::Stopped {
                emit: "hel".into(),
                stop: "lo".into()
            }
        );
    }

    #[test]
    fn held_text_waits_only_while_it_can_match() {
        let mut m = StopMatcher::new(vec!["abc".into()]);
        assert_eq!(m.push("xab"), StopOutcome::Emit("x".into()));
        assert_eq!(m.push("d"), StopOutcome::Emit("abd".into()));
    }

    proptest! {
        /// However the text is cut into pieces, the output is the text up to the first stop string.
        #[test]
        fn piecewise_equals_whole(text in "[ab\\n é東]{0,40}", cuts in proptest::collection::vec(0usize..40, 0..8)) {
            let stop = "b\né";
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|c| *c <= text.len() && text.is_char_boundary(*c)).collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort();
            let pieces: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let expected = match text.find(stop) { Some(i) => (text[..i].to_string(), true), None => (text.clone(), false) };
            prop_assert_eq!(feed(&[stop], &pieces), expected);
        }
    }
}
