"""One module per pipeline step; each step is a plain function, wrapped thinly for kfp."""
