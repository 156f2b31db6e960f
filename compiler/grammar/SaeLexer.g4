// SaeLexer.g4 - tokens of the .sae language (see docs/language.md).
lexer grammar SaeLexer;

SAE    : 'sae';
DIMS   : 'dims';
INPUT  : 'input';
PARAM  : 'param';
STATE  : 'state';
LET    : 'let';
ENCODE : 'encode';
DECODE : 'decode';
LOSS   : 'loss';
TRAIN  : 'train';

LBRACE : '{';
RBRACE : '}';
LPAREN : '(';
RPAREN : ')';
LBRACK : '[';
RBRACK : ']';
COMMA  : ',';
SEMI   : ';';
COLON  : ':';
ASSIGN : '=';
PLUS   : '+';
MINUS  : '-';
STAR   : '*';
SLASH  : '/';
AT     : '@';

FLOAT  : DIGITS '.' DIGITS? EXPONENT? | '.' DIGITS EXPONENT? | DIGITS EXPONENT;
INT    : DIGITS;
IDENT  : [a-zA-Z_] [a-zA-Z_0-9]*;

fragment DIGITS   : [0-9]+;
fragment EXPONENT : [eE] [+-]? DIGITS;

LINE_COMMENT  : '//' ~[\r\n]* -> skip;
BLOCK_COMMENT : '/*' .*? '*/' -> skip;
WS            : [ \t\r\n]+ -> skip;
