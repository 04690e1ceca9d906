"""What caption generators share: the LLM loop, domain packs, caption files, the
checks every triplet passes, the 77-token check and lexical diversity."""
