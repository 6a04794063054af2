//! GPT.
