"""Models: the multiscale 3D U-Net (`unet`) and its building blocks (`layers`)."""
