"""Neural building blocks shared by every encoder variant."""
