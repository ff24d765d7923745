//! Generated scene descriptions and scene timings: pure functions of (seed, scene, time), so
//! results are never stored and a 100,000-asset scenario stays small.

use super::rng::{SplitMix64, mix};

/// (noun phrase, subject pronoun, plural): the pronoun and verb agreement follow the subject.
const SUBJECTS: &[(&str, &str, bool)] = &[
    ("A man in a gray suit", "He", false),
    ("A young woman with a red scarf", "She", false),
    ("Two children in school uniforms", "They", true),
    ("An elderly shopkeeper", "He", false),
    ("A delivery driver in a yellow jacket", "She", false),
    ("A nurse in blue scrubs", "She", false),
    ("A tall man in a black coat", "He", false),
    ("A girl holding a green umbrella", "She", false),
    ("Two detectives", "They", true),
    ("A chef with rolled-up sleeves", "He", false),
];

/// (singular, plural) verbs of arrival.
const MOVES: &[(&str, &str)] = &[
    ("walks", "walk"),
    ("hurries", "hurry"),
    ("steps", "step"),
    ("wanders", "wander"),
    ("rushes", "rush"),
];

const PLACES: &[&str] = &[
    "into the office",
    "across a crowded street",
    "through the hospital corridor",
    "into a small cafe",
    "along the riverside path",
    "onto the windy rooftop",
    "into the busy kitchen",
    "through the rain toward the station",
    "into a dim meeting room",
];

/// (singular, plural) follow-up actions.
const ACTIONS: &[(&str, &str)] = &[
    (
        "greets the colleagues at the door",
        "greet the colleagues at the door",
    ),
    ("looks around nervously", "look around nervously"),
    (
        "sets a heavy bag on the table",
        "set a heavy bag on the table",
    ),
    ("checks a phone and frowns", "check a phone and frown"),
    ("sits down by the window", "sit down by the window"),
    ("picks up an old photograph", "pick up an old photograph"),
    (
        "waves at someone across the room",
        "wave at someone across the room",
    ),
];

const REMARKS: &[&str] = &[
    "Good morning, everyone",
    "We need to leave before the rain starts",
    "I didn't expect to see you here",
    "This is the last time I ask",
    "Let's get started",
    "Everything is going according to plan",
    "You should have called me first",
    "I think we are being followed",
];

/// (singular, plural) verbs of speech.
const SAYS: &[(&str, &str)] = &[
    ("says", "say"),
    ("whispers", "whisper"),
    ("announces", "announce"),
    ("mutters", "mutter"),
];

const FILLERS: &[&str] = &[
    "The camera lingers on a half-empty coffee cup.",
    "Soft morning light falls across the room.",
    "Someone laughs in the background.",
    "A phone rings twice and stops.",
    "The music swells as the scene cuts to the street outside.",
    "Rain taps against the window.",
    "A clock on the wall shows a quarter past nine.",
    "The others exchange worried glances.",
    "A bus passes, briefly hiding the view.",
];

/// A 4-6 sentence description with exactly one quoted remark, like the doc's example (§3).
/// Depends only on its inputs: the same seed, scene and analysis time give the same text.
pub fn description(asset_seed: u64, scene: u32, analyzed_at: i64) -> String {
    let mut rng = SplitMix64::new(mix(&[asset_seed, u64::from(scene), analyzed_at as u64]));
    let (subject, pronoun, plural) = *rng.pick(SUBJECTS).unwrap_or(&SUBJECTS[0]);
    let agree = |pair: &(&'static str, &'static str)| if plural { pair.1 } else { pair.0 };
    let mv = agree(rng.pick(MOVES).unwrap_or(&MOVES[0]));
    let place = rng.pick(PLACES).unwrap_or(&PLACES[0]);
    let action = agree(rng.pick(ACTIONS).unwrap_or(&ACTIONS[0]));
    let remark = rng.pick(REMARKS).unwrap_or(&REMARKS[0]);
    let says = agree(rng.pick(SAYS).unwrap_or(&SAYS[0]));
    let mut out = format!(
        "{subject} {mv} {place}. {pronoun} {action}. \"{remark},\" {} {says}.",
        pronoun.to_lowercase()
    );
    // 4-6 sentences in all: three above, one to three distinct fillers.
    let extra = 1 + rng.below(3) as usize;
    let first = rng.below(FILLERS.len() as u64) as usize;
    for i in 0..extra {
        if let Some(f) = FILLERS.get((first + i) % FILLERS.len()) {
            out.push(' ');
            out.push_str(f);
        }
    }
    out
}

/// Scene lengths in milliseconds, 1.5 s to 12 s each, from the asset's seed; a scene's start is
/// the sum of the lengths before it, so callers walk scenes in order.
pub fn scene_length_ms(asset_seed: u64, scene: u32) -> u64 {
    SplitMix64::new(mix(&[asset_seed, u64::from(scene), 0x5CE4E])).between(1_500, 12_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sentences end in '.', and no table entry contains a '.', '!' or '?' elsewhere.
    fn sentences(s: &str) -> usize {
        s.matches('.').count()
    }

    #[test]
    fn descriptions_have_4_to_6_sentences_and_one_quote() {
        for scene in 1..500 {
            let d = description(7, scene, 1_776_389_400);
            let n = sentences(&d);
            assert!((4..=6).contains(&n), "{n} sentences: {d}");
            assert_eq!(d.matches('"').count(), 2, "{d}");
            assert!(!d.contains('!') && !d.contains('?'), "{d}");
        }
    }

    #[test]
    fn descriptions_are_deterministic_and_vary() {
        assert_eq!(description(1, 3, 100), description(1, 3, 100));
        assert_ne!(description(1, 3, 100), description(1, 3, 101));
        let distinct: std::collections::HashSet<_> =
            (1..50).map(|s| description(1, s, 100)).collect();
        assert!(distinct.len() > 40);
    }

    #[test]
    fn scene_lengths_are_in_range() {
        for s in 1..1000 {
            let l = scene_length_ms(9, s);
            assert!((1_500..=12_000).contains(&l));
        }
    }
}
