"""Reports for people: the printed summary, the HTML report, sweep outputs."""
