"""PhotoGPT AI: portrait models trained on 12-20 images of the repository."""
