"""The meta-trainer: learns a perturbation policy per base model across task episodes, on Ray."""
