"""One module per view; ``base.StudyScreen`` is the pattern they share."""
