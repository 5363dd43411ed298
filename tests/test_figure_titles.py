"""Figure titles are broken into lines that fit their figure (a title wider than its figure is cut off)."""

from kdcicam.report.figures import wrap_to_width


def test_a_long_line_is_broken_at_spaces_to_the_figure_width():
    title = "synthetic (data 4d929149c1) / vgg16 / profile medium, 12 epochs / variant reference"
    wrapped = wrap_to_width(title, 5.6)  # a two-column gallery: 5.6 in at 10 pt -> 67 characters a line
    assert wrapped.split("\n") == ["synthetic (data 4d929149c1) / vgg16 / profile medium, 12 epochs /",
                                   "variant reference"]
    assert wrapped.replace("\n", " ") == title


def test_short_lines_and_their_breaks_are_kept():
    assert wrap_to_width("Table 3\nred: ground truth", 10.0) == "Table 3\nred: ground truth"
    assert wrap_to_width("a\n\nb", 10.0) == "a\n\nb"


def test_a_word_longer_than_the_width_is_not_cut():
    word = "x" * 60
    assert wrap_to_width(f"{word} y", 1.0) == f"{word}\ny"  # 1 in fits 12 characters; at least 20 are kept
