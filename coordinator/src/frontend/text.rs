//! The first job of the front-end: bound the SQL text (length, tokens, nesting, conditions)
//! with one linear scan, before the parser sees it.

use super::{Complexity, Unsupported};

/// The longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// The most tokens (words, constants, symbols) in one query.
pub const MAX_SQL_TOKENS: usize = 20_000;
/// The deepest nesting of parentheses and prefix NOTs. Past its recursion limit the SQL
/// parser backtracks on nested `NOT (`, in time that grows about 2.4-fold per level (40
/// levels took 66 s in a debug build, 30 levels 8 ms); 12 stays far below where that starts.
pub const MAX_SQL_NESTING: usize = 12;
/// Checks the SQL text's size and shape with a linear scan before the parser sees it, so
/// that no text can make parsing or planning take unbounded time or stack.
pub fn check_sql_text(sql: &str) -> Result<(), Unsupported> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > MAX_SQL_BYTES {
        return Err(Complexity::Bytes { kib: sql.len().div_ceil(1024) }.into());
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().map_err(|e| Unsupported::Sql(e.to_string()))?;
    let words: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    if words.len() > MAX_SQL_TOKENS {
        return Err(Complexity::Tokens { tokens: words.len() }.into());
    }
    let keyword = |t: Option<&&Token>| match t {
        Some(Token::Word(w)) => Some(w.keyword),
        _ => None,
    };
    // Nesting: open parentheses, plus prefix NOTs, each of which lasts until the next AND / OR
    // at its level or the parenthesis it stands in closes.
    let mut open_nots: Vec<usize> = vec![0];
    let (mut deepest, mut connectives) = (0usize, 0usize);
    for (i, t) in words.iter().enumerate() {
        match t {
            Token::LParen => open_nots.push(0),
            Token::RParen if open_nots.len() > 1 => {
                open_nots.pop();
            }
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR) => {
                connectives += 1;
                // NOT binds tighter than AND / OR: the NOTs before it at this level end here.
                if let Some(n) = open_nots.last_mut() {
                    *n = 0;
                }
            }
            Token::Word(w) if w.keyword == Keyword::NOT => {
                let after_is = i > 0 && keyword(words.get(i - 1)) == Some(Keyword::IS);
                let infix = matches!(
                    keyword(words.get(i + 1)),
                    Some(Keyword::IN | Keyword::BETWEEN | Keyword::LIKE | Keyword::ILIKE | Keyword::SIMILAR)
                );
                if let Some(n) = open_nots.last_mut().filter(|_| !after_is && !infix) {
                    *n += 1;
                }
            }
            _ => {}
        }
        deepest = deepest.max(open_nots.len() - 1 + open_nots.iter().sum::<usize>());
    }
    if deepest > MAX_SQL_NESTING {
        return Err(Complexity::Nesting { depth: deepest }.into());
    }
    // BETWEEN's AND is a connective to the scanner, hence the factor 2.
    if connectives > 2 * verbund_query::validate::MAX_FILTER_NODES {
        return Err(Complexity::Conditions.into());
    }
    Ok(())
}
