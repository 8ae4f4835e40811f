"""Training: stage configs and recipes, the discriminator, the GAD trainer and the stage runner."""
