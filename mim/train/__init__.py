"""Training loops: stage 1 (the renderer); checkpoints and DDP helpers shared by the stages."""
