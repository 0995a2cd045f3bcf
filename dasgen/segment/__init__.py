"""segment package."""
