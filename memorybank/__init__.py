"""Feature-memory detectors on a frozen pretrained backbone: PatchCore (`-a patchcore`) and PaDiM (`-a padim`)."""
