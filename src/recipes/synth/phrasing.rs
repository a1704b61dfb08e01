//! The question text: people, the things they hold, and the fixed wording of each step.

use super::rng::SynthRng;
use super::Op;

/// A named person with the pronouns the templates need.
struct Person {
    name: &'static str,
    subj: &'static str,
    poss: &'static str,
}

/// What the person holds: `noun` follows numbers and "How many"; `stuff` follows a
/// possessive ("her money", "his rope"). Money uses its own add/subtract verbs.
struct Thing {
    noun: &'static str,
    stuff: &'static str,
    money: bool,
}

const fn she(name: &'static str) -> Person {
    Person {
        name,
        subj: "she",
        poss: "her",
    }
}

const fn he(name: &'static str) -> Person {
    Person {
        name,
        subj: "he",
        poss: "his",
    }
}

const PEOPLE: [Person; 22] = [
    she("Mia"),
    he("Liam"),
    she("Ava"),
    he("Noah"),
    she("Zoe"),
    he("Omar"),
    she("Lena"),
    he("Ravi"),
    she("Sofia"),
    he("Kenji"),
    she("Amara"),
    he("Diego"),
    she("Priya"),
    he("Lucas"),
    she("Hana"),
    he("Mateo"),
    she("Nora"),
    he("Tariq"),
    she("Ines"),
    he("Felix"),
    she("Yara"),
    he("Owen"),
];

/// A countable object: its plural serves as both noun forms.
const fn item(noun: &'static str) -> Thing {
    Thing {
        noun,
        stuff: noun,
        money: false,
    }
}

/// A measured quantity such as "liters of juice" / "juice".
const fn unit(noun: &'static str, stuff: &'static str) -> Thing {
    Thing {
        noun,
        stuff,
        money: false,
    }
}

const THINGS: [Thing; 22] = [
    item("marbles"),
    item("stickers"),
    item("apples"),
    item("pencils"),
    item("cards"),
    item("shells"),
    item("beads"),
    item("stamps"),
    item("cookies"),
    item("books"),
    item("buttons"),
    item("balloons"),
    item("crayons"),
    item("candies"),
    item("eggs"),
    item("toy cars"),
    Thing {
        noun: "dollars",
        stuff: "money",
        money: true,
    },
    unit("meters of rope", "rope"),
    unit("liters of juice", "juice"),
    unit("kilograms of flour", "flour"),
    unit("cups of rice", "rice"),
    unit("sheets of paper", "paper"),
];

/// The words naming "one k-th" for the "keeps only ..." division phrasing.
fn fraction_name(k: u64) -> Option<&'static str> {
    let names = [
        "half",
        "one third",
        "one fourth",
        "one fifth",
        "one sixth",
        "one seventh",
        "one eighth",
        "one ninth",
    ];
    names.get(usize::try_from(k.checked_sub(2)?).ok()?).copied()
}

/// The whole question: opening fact, one sentence per step, one question sentence.
pub(super) fn write_question(rng: &mut SynthRng, start: u64, ops: &[Op]) -> String {
    let who = rng.pick(&PEOPLE).unwrap_or(&PEOPLE[0]);
    let what = rng.pick(&THINGS).unwrap_or(&THINGS[0]);
    let mut parts = vec![opening(rng, who, what, start)];
    for (i, op) in ops.iter().enumerate() {
        let subject = step_subject(rng, who, i);
        parts.push(format!("{subject} {}.", step_phrase(rng, who, what, op)));
    }
    parts.push(closing(rng, who, what));
    parts.join(" ")
}

/// "Mia has 48 marbles." or "Mia starts with 48 marbles."
fn opening(rng: &mut SynthRng, who: &Person, what: &Thing, start: u64) -> String {
    let verb = if rng.below(2) == 0 {
        "has"
    } else {
        "starts with"
    };
    format!("{} {verb} {start} {}.", who.name, what.noun)
}

/// "How many marbles does Mia have now?" (or "... in the end?").
fn closing(rng: &mut SynthRng, who: &Person, what: &Thing) -> String {
    let when = if rng.below(2) == 0 {
        "now"
    } else {
        "in the end"
    };
    format!("How many {} does {} have {when}?", what.noun, who.name)
}

/// "She" for the first step, then "Then she" / "Next, she" / "After that, she".
fn step_subject(rng: &mut SynthRng, who: &Person, i: usize) -> String {
    if i == 0 {
        return capitalize(who.subj);
    }
    let link = rng
        .pick(&["Then", "Next,", "After that,"])
        .copied()
        .unwrap_or("Then");
    format!("{link} {}", who.subj)
}

/// `s` with its first letter upper-cased.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The verb phrase (without subject) describing one step.
fn step_phrase(rng: &mut SynthRng, who: &Person, what: &Thing, op: &Op) -> String {
    match *op {
        Op::Add(n) => add_phrase(rng, what, n),
        Op::Sub(n) => sub_phrase(rng, what, n),
        Op::Mul(k) => mul_phrase(rng, who, what, k),
        Op::Div(k) => div_phrase(rng, who, what, k),
    }
}

/// "buys 13 more marbles", "earns 13 more dollars", ...
fn add_phrase(rng: &mut SynthRng, what: &Thing, n: u64) -> String {
    let noun = what.noun;
    match (rng.below(3), what.money) {
        (0, false) => format!("buys {n} more {noun}"),
        (0, true) => format!("earns {n} more {noun}"),
        (1, _) => format!("gets {n} more {noun} from a friend"),
        _ => format!("receives {n} more {noun} as a gift"),
    }
}

/// "gives away 13 marbles", "spends 13 dollars", ...
fn sub_phrase(rng: &mut SynthRng, what: &Thing, n: u64) -> String {
    let noun = what.noun;
    match (rng.below(3), what.money) {
        (0, _) => format!("gives away {n} {noun}"),
        (1, false) => format!("sells {n} {noun}"),
        (1, true) => format!("spends {n} {noun}"),
        _ => format!("loses {n} {noun}"),
    }
}

/// Phrasings whose resulting total is exactly `k` times the current amount.
fn mul_phrase(rng: &mut SynthRng, who: &Person, what: &Thing, k: u64) -> String {
    let choices = if k == 2 || k == 3 { 3 } else { 2 };
    match rng.below(choices) {
        0 => format!("ends up with {k} times as many {} as before", what.noun),
        1 => format!(
            "gets more {} until {} has {k} times as many as before",
            what.noun, who.subj
        ),
        _ => {
            let verb = if k == 2 { "doubles" } else { "triples" };
            format!("{verb} {} {}", who.poss, what.stuff)
        }
    }
}

/// Phrasings whose result is exactly one `k`-th of the current amount.
fn div_phrase(rng: &mut SynthRng, who: &Person, what: &Thing, k: u64) -> String {
    let (poss, stuff) = (who.poss, what.stuff);
    match (rng.below(3), fraction_name(k)) {
        (0, Some(frac)) => format!("keeps only {frac} of {poss} {stuff} and gives the rest away"),
        (1, _) => format!("divides {poss} {stuff} into {k} equal parts and keeps one part"),
        _ => format!("splits {poss} {stuff} into {k} equal shares and keeps one share"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipes::synth::generate;
    use crate::recipes::synth::test_support::{all, small_cfg};

    #[test]
    fn questions_are_well_formed() {
        let s = generate(&small_cfg(8)).unwrap();
        for p in all(&s) {
            let q = &p.question;
            assert_eq!(q.matches('?').count(), 1, "{q}");
            assert!(
                q.ends_with(" have now?") || q.ends_with(" have in the end?"),
                "{q}"
            );
            let first = q.split_whitespace().next().unwrap();
            let name_again = format!("does {first} have");
            assert!(q.contains(&name_again), "name inconsistent: {q}");
            assert!(
                q.starts_with(&format!("{first} has {} ", p.start))
                    || q.starts_with(&format!("{first} starts with {} ", p.start))
            );
            for op in &p.ops {
                assert!(
                    q.contains(&op.operand().to_string())
                        || matches!(op, Op::Div(_) | Op::Mul(2 | 3)),
                    "{q}"
                );
            }
        }
    }
}
