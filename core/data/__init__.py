"""The data a run trains on: latents of the embedded digits, random latents or an encoded folder,
the VAEs that make and decode them, and the encoding of an image folder."""
