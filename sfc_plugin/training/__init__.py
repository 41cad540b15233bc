"""Making dictionaries: the offline training corpus, the SAE trainer (SAELens'
multi-SAE runner) and bundling trained SAEs as a release."""
