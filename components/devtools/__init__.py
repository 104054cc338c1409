"""Development tools apart from the product's steps: the simulator and the experiment harness."""
