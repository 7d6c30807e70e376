//! The source mutation operators for the eBPF programs (cargo-mutants does not mutate
//! `no_std` code built for the BPF target by a nested cargo): small, realistic slips of a
//! data-path author, each applied to one place of one line.
//!
//! - **flip a comparison**: `<` and `<=`, `>` and `>=`, `==` and `!=` (binary operators only:
//!   rustfmt writes them with a space on each side, generics and arrows have none);
//! - **shift a constant**: an integer literal that a comparison or arithmetic uses, by one;
//! - **drop a statement**: a counter bump, a map insert or remove, a store through a pointer
//!   or a field (the line becomes `();`), the slips that lose state without a compile error;
//! - **swap two indices**: two literal indices on one line (`w[0] ... w[1]`).
//!
//! Comments and doc lines are never mutated. Pure: text in, mutants out.

/// One mutant: a replacement of one line of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LineMutant {
    /// 1-based line number.
    pub(crate) line: usize,
    /// What the operator did, for the report (`flip '<' to '<='`).
    pub(crate) what: String,
    /// The new text of the line.
    pub(crate) replacement: String,
}

const FLIPS: [(&str, &str); 6] =
    [(" < ", " <= "), (" <= ", " < "), (" > ", " >= "), (" >= ", " > "), (" == ", " != "), (" != ", " == ")];

/// Every mutant of `source` (a Rust file), in line order.
pub(crate) fn mutants(source: &str) -> Vec<LineMutant> {
    let mut out = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let code = code_of(line);
        if code.trim().is_empty() || code.trim_start().starts_with('#') {
            continue;
        }
        let number = i + 1;
        for (from, to) in FLIPS {
            for at in occurrences(code, from) {
                out.push(LineMutant {
                    line: number,
                    what: format!("flip '{}' to '{}'", from.trim(), to.trim()),
                    replacement: splice(line, at, from.len(), to),
                });
            }
        }
        if has_operator(code) {
            for (at, len, value) in integer_literals(code) {
                for shifted in [value.wrapping_add(1), value.wrapping_sub(1)] {
                    if value == 0 && shifted == u128::MAX {
                        continue;
                    }
                    out.push(LineMutant {
                        line: number,
                        what: format!("shift constant {value} to {shifted}"),
                        replacement: splice(line, at, len, &shifted.to_string()),
                    });
                }
            }
        }
        if droppable(code) {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push(LineMutant {
                line: number,
                what: format!("drop statement '{}'", code.trim()),
                replacement: format!("{indent}();"),
            });
        }
        let indices = literal_indices(code);
        if indices.len() == 2 && indices[0].2 != indices[1].2 {
            let (a, b) = (&indices[0], &indices[1]);
            let mut swapped = line.to_owned();
            // The later one first, so the earlier offset stays valid.
            swapped.replace_range(b.0..b.0 + b.1, &a.2);
            swapped.replace_range(a.0..a.0 + a.1, &b.2);
            out.push(LineMutant {
                line: number,
                what: format!("swap indices [{}] and [{}]", a.2, b.2),
                replacement: swapped,
            });
        }
    }
    out
}

/// `line` without a trailing `//` comment (a `//` inside a string literal is rare enough in
/// BPF code to be ignored: the line then just yields fewer mutants).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

fn occurrences(code: &str, pattern: &str) -> Vec<usize> {
    code.match_indices(pattern).map(|(at, _)| at).collect()
}

fn splice(line: &str, at: usize, len: usize, with: &str) -> String {
    format!("{}{}{}", &line[..at], with, &line[at + len..])
}

/// Whether `code` compares or computes (so that its literals are values, not sizes of types).
fn has_operator(code: &str) -> bool {
    FLIPS.iter().any(|(op, _)| code.contains(op))
        || [" + ", " - ", " += ", " -= ", " & ", " | ", " % ", " << ", " >> "].iter().any(|op| code.contains(op))
}

/// Decimal integer literals that stand alone (not part of a name, a type suffix's digits, a
/// hex literal or an index): (offset, length, value).
fn integer_literals(code: &str) -> Vec<(usize, usize, u128)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'['));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b'_') {
            j += 1;
        }
        let hex_or_suffix = j < bytes.len() && (bytes[j].is_ascii_alphabetic() || bytes[j] == b'.');
        if !hex_or_suffix && let Ok(value) = code[i..j].replace('_', "").parse::<u128>() {
            out.push((i, j - i, value));
        }
        i = j;
    }
    out
}

/// A statement whose loss compiles and loses state: a counter bump, a map write, a store.
fn droppable(code: &str) -> bool {
    let t = code.trim();
    if !t.ends_with(';') || t.starts_with("let ") && !t.starts_with("let _ = ") || t.starts_with("return") {
        return false;
    }
    t.contains(".add(")
        || t.contains("count(")
        || t.contains(".insert(")
        || t.contains(".remove(")
        || t.contains(" += ")
        || t.contains(" |= ")
        || (t.starts_with('*') && t.contains(" = "))
        || (t.contains('.') && t.contains(" = ") && !t.starts_with("let "))
}

/// Literal indices `[N]` on a line: (offset, length, digits).
fn literal_indices(code: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices('[') {
        let rest = &code[at + 1..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty()
            && rest[digits.len()..].starts_with(']')
            && at > 0
            && code.as_bytes()[at - 1].is_ascii_alphanumeric()
        {
            out.push((at + 1, digits.len(), digits));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operator_on_a_line_of_its_kind() {
        let src = "    if off >= end {\n    stats.add(counter::LRU_HIT);\n    let x = (w[0], w[1]);\n    i += 1;\n";
        let all = mutants(src);
        let whats: Vec<&str> = all.iter().map(|m| m.what.as_str()).collect();
        assert!(whats.contains(&"flip '>=' to '>'"), "{whats:?}");
        assert!(whats.contains(&"drop statement 'stats.add(counter::LRU_HIT);'"), "{whats:?}");
        assert!(whats.contains(&"swap indices [0] and [1]"), "{whats:?}");
        assert!(whats.contains(&"shift constant 1 to 2") && whats.contains(&"shift constant 1 to 0"), "{whats:?}");
        let flip = all.iter().find(|m| m.what == "flip '>=' to '>'").unwrap();
        assert_eq!((flip.line, flip.replacement.as_str()), (1, "    if off > end {"));
        let swap = all.iter().find(|m| m.what.starts_with("swap")).unwrap();
        assert_eq!(swap.replacement, "    let x = (w[1], w[0]);");
    }

    #[test]
    fn comments_generics_types_and_bindings_are_left_alone() {
        let src = "/// if a < b {\n    let v: Vec<u32> = f(); // a == b\nfn g<T>() -> u32 {\nconst N: usize = 64;\n    let y = 3;\n";
        assert_eq!(mutants(src), Vec::new());
    }
}
