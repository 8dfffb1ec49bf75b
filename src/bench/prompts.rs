//! The prompts `rill bench` sends when none are given: short, distinct user messages, so that consecutive
//! requests share no more than the chat template's prefix and no server's prefix cache flatters its numbers.

use std::path::Path;

use super::error::BenchError;

/// Built-in user messages; request `i` uses `BUILT_IN[i % len]`.
pub const BUILT_IN: &[&str] = &[
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about autumn rain.",
    "List three uses of copper.",
    "Why do cats purr?",
    "Describe the water cycle briefly.",
    "What causes ocean tides?",
    "Give me a tip for learning a new language.",
    "How does a bicycle stay upright?",
    "Name four planets and one fact about each.",
    "What is a prime number? Give examples.",
    "Summarise the plot of Romeo and Juliet.",
    "How do vaccines train the immune system?",
    "Suggest a name for a small bakery.",
    "What is the difference between weather and climate?",
    "Explain what a database index is.",
    "Why is the sky blue?",
    "Write a short poem about a lighthouse.",
    "How do bees make honey?",
    "What should I pack for a day hike?",
    "Explain recursion to a child.",
    "What is the tallest mountain in Africa?",
    "Give three reasons to drink water.",
    "Describe a sunset over the sea.",
];

/// The prompts to use: `--prompt` values, then the lines of `--prompts-file` (blank lines skipped); the
/// built-in list when neither gives any.
pub fn load(flags: &[String], file: Option<&Path>) -> Result<Vec<String>, BenchError> {
    let mut prompts: Vec<String> = flags.to_vec();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let before = prompts.len();
        prompts.extend(
            text.lines()
                .map(str::trim_end)
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
        if prompts.len() == before {
            return Err(BenchError::Invalid(format!(
                "{} holds no prompts",
                path.display()
            )));
        }
    }
    if prompts.is_empty() {
        prompts = BUILT_IN.iter().map(|s| s.to_string()).collect();
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_prompts_are_many_and_distinct() {
        let mut v = BUILT_IN.to_vec();
        v.sort();
        v.dedup();
        assert!(v.len() >= 16 && v.len() == BUILT_IN.len());
    }

    #[test]
    fn flags_then_file_lines() {
        let dir = std::env::temp_dir().join(format!("rill-bench-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.txt");
        std::fs::write(&f, "one\n\n  \ntwo\r\n").unwrap();
        let got = load(&["zero".into()], Some(&f)).unwrap();
        assert_eq!(got, ["zero", "one", "two"]);
        std::fs::write(&f, "\n").unwrap();
        assert!(load(&[], Some(&f)).is_err());
        assert_eq!(load(&[], None).unwrap().len(), BUILT_IN.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
