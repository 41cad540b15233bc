"""Making dictionaries: the offline training corpus, the SAE trainer (SAELens'
multi-SAE runner) and bundling a release into the package."""
