//! Splitting a document into chunks the embedding model can read whole:
//! by Markdown headings first (a chunk never spans two sections, and
//! carries its section's heading path, so that a passage about "Verify"
//! still says which runbook it belongs to), then by a token budget with
//! overlap. Tokens are counted by the caller's function (the model's own
//! word pieces), so the budget is the model's window, not a guess.

/// One chunk: its text as embedded and searched (heading path first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub ordinal: usize,
    pub text: String,
}

/// The budget of one chunk, in the counter's tokens.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// At most this many tokens per chunk, heading path and overlap
    /// included.
    pub max_tokens: usize,
    /// About this many tokens of a section's previous chunk start its
    /// next one (whole lines, never more than half the budget).
    pub overlap_tokens: usize,
}

impl Default for Budget {
    /// all-MiniLM-L6-v2 reads 256 word pieces, two of which are [CLS] and
    /// [SEP].
    fn default() -> Self {
        Budget {
            max_tokens: 254,
            overlap_tokens: 40,
        }
    }
}

/// A section: the heading path above it and its lines.
struct Section {
    path: Vec<String>,
    lines: Vec<String>,
}

fn sections(text: &str) -> Vec<Section> {
    let mut out = vec![Section {
        path: Vec::new(),
        lines: Vec::new(),
    }];
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        let is_heading = !fenced
            && (1..=6).contains(&level)
            && trimmed[level..].starts_with(' ')
            && !trimmed[level..].trim().is_empty();
        if is_heading {
            path.retain(|(l, _)| *l < level);
            path.push((level, trimmed[level..].trim().to_string()));
            out.push(Section {
                path: path.iter().map(|(_, h)| h.clone()).collect(),
                lines: Vec::new(),
            });
        } else if !line.trim().is_empty() {
            out.last_mut()
                .expect("there is always a section")
                .lines
                .push(line.trim_end().to_string());
        }
    }
    out.retain(|s| !s.lines.is_empty());
    out
}

/// Words of one over-long line, cut to pieces that fit `room` (at least
/// one character each, so that it always ends).
fn split_line(line: &str, room: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for word in line.split_whitespace() {
        let candidate = if current.is_empty() {
            word.to_string()
        } else {
            format!("{current} {word}")
        };
        if count(&candidate) <= room {
            current = candidate;
            continue;
        }
        if !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        // One word longer than the room (minified JSON, a hash, a rule of
        // `=`): cut at the longest prefix that fits, found by bisection
        // within the next 4 × room characters (a word piece is at least
        // one character and rarely more than four), so that a long word
        // costs O(n log room) tokenising, not O(n^2).
        let mut rest = word;
        while count(rest) > room {
            let bounds: Vec<usize> = rest
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .take(room.max(1) * 4)
                .collect();
            let (mut lo, mut hi) = (0, bounds.len() - 1);
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if count(&rest[..bounds[mid]]) <= room {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            let cut = bounds[lo];
            pieces.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        current = rest.to_string();
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// The heading path as a chunk's first line, its leading words only if
/// it would take more than `limit` tokens.
fn heading(path: &[String], limit: usize, count: &dyn Fn(&str) -> usize) -> String {
    if path.is_empty() {
        return String::new();
    }
    let mut head = path.join(" > ");
    if count(&head) > limit {
        let mut kept = String::new();
        for word in head.split_whitespace() {
            let candidate = if kept.is_empty() {
                word.to_string()
            } else {
                format!("{kept} {word}")
            };
            if count(&candidate) > limit {
                break;
            }
            kept = candidate;
        }
        head = kept;
    }
    if head.is_empty() {
        head
    } else {
        format!("{head}\n")
    }
}

/// The chunks of `text` (Markdown or plain), each at most
/// `budget.max_tokens` by `count`.
pub fn chunk(text: &str, budget: Budget, count: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for section in sections(text) {
        let head = heading(&section.path, budget.max_tokens / 2, count);
        let joined = |lines: &[String]| format!("{head}{}", lines.join("\n"));
        // The room a line has beside the heading path (at least half).
        let room = budget.max_tokens.saturating_sub(count(&head));
        let lines: Vec<String> = section
            .lines
            .iter()
            .flat_map(|l| {
                if count(l) > room {
                    split_line(l, room, count)
                } else {
                    vec![l.clone()]
                }
            })
            .collect();
        let mut current: Vec<String> = Vec::new();
        let mut fresh = 0; // lines in `current` not carried over
        for line in lines {
            let mut candidate = current.clone();
            candidate.push(line.clone());
            if count(&joined(&candidate)) <= budget.max_tokens {
                current = candidate;
                fresh += 1;
                continue;
            }
            if fresh > 0 {
                out.push(Chunk {
                    ordinal: out.len(),
                    text: joined(&current),
                });
            }
            // The next chunk opens with the last lines of this one, as
            // many as fit the overlap, and the new line must still fit.
            let limit = budget.overlap_tokens.min(budget.max_tokens / 2);
            let mut carried: Vec<String> = Vec::new();
            for previous in current.iter().rev() {
                let mut with = vec![previous.clone()];
                with.extend(carried.iter().cloned());
                if count(&with.join("\n")) > limit {
                    break;
                }
                carried = with;
            }
            loop {
                let mut candidate = carried.clone();
                candidate.push(line.clone());
                if count(&joined(&candidate)) <= budget.max_tokens || carried.is_empty() {
                    current = candidate;
                    break;
                }
                carried.remove(0);
            }
            fresh = 1;
        }
        if fresh > 0 {
            out.push(Chunk {
                ordinal: out.len(),
                text: joined(&current),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn sections_carry_their_heading_path_and_fences_are_not_headings() {
        let doc = "# Disk full\nintro line\n## Diagnose\n```sh\n# not a heading\ndf -h\n```\n## Verify\nfree > 10 %\n";
        let chunks = chunk(doc, Budget::default(), &words);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Disk full\nintro line",
                "Disk full > Diagnose\n```sh\n# not a heading\ndf -h\n```",
                "Disk full > Verify\nfree > 10 %",
            ]
        );
        assert_eq!(
            chunks.iter().map(|c| c.ordinal).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn a_long_section_is_cut_with_overlap() {
        let body: Vec<String> = (0..30).map(|i| format!("line {i} a b c d")).collect();
        let doc = format!("# Runbook\n{}", body.join("\n"));
        let budget = Budget {
            max_tokens: 40,
            overlap_tokens: 12,
        };
        let chunks = chunk(&doc, budget, &words);
        assert!(chunks.len() > 3, "{chunks:?}");
        for pair in chunks.windows(2) {
            let last_of_first = pair[0].text.lines().last().unwrap();
            assert!(
                pair[1].text.lines().any(|l| l == last_of_first),
                "the next chunk repeats the end of the one before: {pair:?}"
            );
        }
        // Every line is somewhere.
        for line in &body {
            assert!(chunks.iter().any(|c| c.text.lines().any(|l| l == line)));
        }
    }

    /// One token per character: a long unbroken word must be cut to
    /// the budget, quickly, and lose nothing.
    #[test]
    fn an_unbroken_line_is_cut_to_the_budget() {
        let chars = |s: &str| s.chars().filter(|c| !c.is_whitespace()).count();
        let word = "{\"a\":1,\"b\":[2,3]}".repeat(3000);
        let chunks = chunk(&format!("# Dump\n{word}"), Budget::default(), &chars);
        assert!(chunks.len() > 100, "{}", chunks.len());
        for c in &chunks {
            assert!(chars(&c.text) <= 254, "{}", chars(&c.text));
        }
        let rebuilt: String = chunks
            .iter()
            .map(|c| c.text.trim_start_matches("Dump\n"))
            .collect();
        assert_eq!(rebuilt, word);
    }

    proptest! {
        /// Whatever the text, no chunk exceeds the budget and no word of
        /// the body is lost.
        #[test]
        fn chunks_fit_the_budget_and_keep_every_word(
            lines in prop::collection::vec("(#{1,3} )?[a-z]{1,12}( [a-z0-9]{1,40}){0,30}", 0..40),
            max in 16usize..80,
            overlap in 0usize..30,
        ) {
            let doc = lines.join("\n");
            let budget = Budget { max_tokens: max, overlap_tokens: overlap };
            let chunks = chunk(&doc, budget, &words);
            for c in &chunks {
                prop_assert!(words(&c.text) <= max, "{} > {max}: {:?}", words(&c.text), c.text);
            }
            let all: String = chunks.iter().map(|c| c.text.clone()).collect::<Vec<_>>().join(" ");
            // Body lines: a heading with nothing under it has nothing to find.
            for line in lines.iter().filter(|l| !l.starts_with('#')) {
                for w in line.split_whitespace().filter(|w| !w.starts_with('#')) {
                    prop_assert!(all.split_whitespace().any(|x| x == w), "{w} lost");
                }
            }
        }
    }
}
