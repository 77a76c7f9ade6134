"""Tables (pandas), figures (seaborn) and the paper-reproduction report built from dpbench result files."""
