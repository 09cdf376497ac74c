"""Training, after torchvision's references/classification: `loop` (train, train_one_epoch,
evaluate), `optim` (optimizer and schedule), `checkpoint` (save and resume), `distributed`
(device, torchrun, replica check)."""
