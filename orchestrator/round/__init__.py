"""One trial's rounds: rank the target pool on Ray actors, buy labels, adapt on Ray Train, evaluate; and the
cached models every trial starts from (source model, label-free warm-up, oracle reference)."""
