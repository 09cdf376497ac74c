"""Training, after torchvision's references/classification: `loop` (train, train_one_epoch,
evaluate), `optim` (optimizer and schedule), `checkpoint` (save and resume), `live` (dvclive),
`precision` (bf16 where the device has it), `compile` (the compiled step), `distributed` (device,
torchrun, replica check)."""
