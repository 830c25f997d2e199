"""Evaluation: PSNR, SSIM and LPIPS of sampled target views on fixed evaluation indices."""
